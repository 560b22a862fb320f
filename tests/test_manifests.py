"""Manifests, tags, listings and referrers over a real socket."""

from __future__ import annotations

import json

import pytest

from tests.helpers import (
    EMPTY_JSON,
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    error_code,
    push_blob,
    push_image,
    push_manifest,
    sha256,
    unique_repo,
)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def test_manifest_head_matches_get(client):
    repo = unique_repo("m")
    image = push_image(client, repo)
    get = client.get(f"/v2/{repo}/manifests/v1")
    head = client.head(f"/v2/{repo}/manifests/v1")
    assert get.content == image["manifest"]
    for name in ("docker-content-digest", "content-length", "content-type"):
        assert head.headers[name] == get.headers[name]
    assert get.headers["content-type"] == OCI_MANIFEST
    assert get.headers["docker-content-digest"] == image["digest"]


def test_manifest_push_answers_location_and_digest(client):
    repo = unique_repo("m")
    image = push_image(client, repo, tag=None)
    response = push_manifest(client, repo, "v9", image["manifest"])
    assert response.status_code == 201
    assert response.headers["location"] == f"/v2/{repo}/manifests/{image['digest']}"
    assert response.headers["docker-content-digest"] == image["digest"]


def test_docker_schema2_manifest_and_list(client):
    repo = unique_repo("m")
    config = b'{"architecture":"amd64","os":"linux"}'
    layer = b"docker layer" * 50
    push_blob(client, repo, config)
    push_blob(client, repo, layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor(
                "application/vnd.docker.container.image.v1+json", config
            ),
            "layers": [
                descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", layer)
            ],
        }
    ).encode()
    assert (
        push_manifest(client, repo, "amd64", manifest, DOCKER_MANIFEST).status_code
        == 201
    )
    manifest_list = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [
                descriptor(
                    DOCKER_MANIFEST,
                    manifest,
                    platform={"architecture": "amd64", "os": "linux"},
                )
            ],
        }
    ).encode()
    assert (
        push_manifest(client, repo, "multi", manifest_list, DOCKER_LIST).status_code
        == 201
    )
    response = client.get(f"/v2/{repo}/manifests/multi")
    assert response.headers["content-type"] == DOCKER_LIST
    assert response.content == manifest_list


def test_descriptor_size_must_match_stored_blob(client):
    repo = unique_repo("m")
    config = b'{"os":"linux"}'
    push_blob(client, repo, config)
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            **descriptor("application/vnd.oci.image.config.v1+json", config),
            "size": 3,
        },
        "layers": [],
    }
    response = push_manifest(client, repo, "v1", json.dumps(body).encode())
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_INVALID"
    assert "size" in response.json()["errors"][0]["message"]


def test_manifest_at_size_limit_is_accepted_and_one_more_byte_is_not(client):
    repo = unique_repo("m")
    image = push_image(client, repo)
    body = json.loads(image["manifest"])
    body["annotations"] = {"pad": ""}
    base = len(json.dumps(body).encode())
    limit = 4 * 1024 * 1024
    body["annotations"]["pad"] = "x" * (limit - base)
    exact = json.dumps(body).encode()
    assert len(exact) == limit
    assert push_manifest(client, repo, "big", exact).status_code == 201
    assert client.get(f"/v2/{repo}/manifests/big").content == exact
    body["annotations"]["pad"] += "x"
    over = push_manifest(client, repo, "bigger", json.dumps(body).encode())
    assert over.status_code == 413
    assert "4194304" in over.json()["errors"][0]["message"]


def test_manifest_over_limit_without_content_length_is_stopped(client):
    repo = unique_repo("m")

    def body():
        for _ in range(5):
            yield b" " * (1024 * 1024)

    response = client.put(
        f"/v2/{repo}/manifests/v1",
        content=body(),
        headers={"content-type": OCI_MANIFEST},
    )
    assert response.status_code == 413
    assert client.get(f"/v2/{repo}/manifests/v1").status_code == 404


def test_subject_that_does_not_exist_is_accepted_with_oci_subject(client):
    repo = unique_repo("m")
    push_blob(client, repo, b"{}")
    subject = {"mediaType": OCI_MANIFEST, "digest": sha256(b"later"), "size": 5}
    artifact = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/x-sbom",
            "config": descriptor(EMPTY_JSON, b"{}"),
            "layers": [descriptor(EMPTY_JSON, b"{}")],
            "subject": subject,
        }
    ).encode()
    response = push_manifest(client, repo, sha256(artifact), artifact)
    assert response.status_code == 201, response.text
    assert response.headers["oci-subject"] == subject["digest"]


def test_referrers_lists_artifacts_and_filters_by_type(client):
    repo = unique_repo("m")
    image = push_image(client, repo)
    push_blob(client, repo, b"{}")
    subject = descriptor(OCI_MANIFEST, image["manifest"])
    pushed = {}
    for kind in ("application/x-sbom", "application/x-signature"):
        artifact = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": kind,
                "config": descriptor(EMPTY_JSON, b"{}"),
                "layers": [descriptor(EMPTY_JSON, b"{}")],
                "subject": subject,
                "annotations": {"kind": kind},
            }
        ).encode()
        assert (
            push_manifest(client, repo, sha256(artifact), artifact).status_code == 201
        )
        pushed[kind] = artifact

    everything = client.get(f"/v2/{repo}/referrers/{image['digest']}")
    assert everything.status_code == 200
    assert everything.headers["content-type"] == OCI_INDEX
    assert "oci-filters-applied" not in everything.headers
    index = everything.json()
    assert index["mediaType"] == OCI_INDEX
    found = {m["artifactType"]: m for m in index["manifests"]}
    assert set(found) == set(pushed)
    for kind, artifact in pushed.items():
        assert found[kind]["digest"] == sha256(artifact)
        assert found[kind]["size"] == len(artifact)
        assert found[kind]["annotations"] == {"kind": kind}

    filtered = client.get(
        f"/v2/{repo}/referrers/{image['digest']}",
        params={"artifactType": "application/x-sbom"},
    )
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    assert [m["artifactType"] for m in filtered.json()["manifests"]] == [
        "application/x-sbom"
    ]


def test_image_config_media_type_is_artifact_type_when_none_given(client):
    repo = unique_repo("m")
    image = push_image(client, repo)
    config = b'{"custom": true}'
    push_blob(client, repo, config)
    artifact = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/x-custom-config", config),
            "layers": [],
            "subject": descriptor(OCI_MANIFEST, image["manifest"]),
        }
    ).encode()
    assert push_manifest(client, repo, sha256(artifact), artifact).status_code == 201
    index = client.get(f"/v2/{repo}/referrers/{image['digest']}").json()
    assert [m["artifactType"] for m in index["manifests"]] == [
        "application/x-custom-config"
    ]


def test_delete_by_tag_keeps_the_manifest(client):
    repo = unique_repo("m")
    image = push_image(client, repo)
    push_manifest(client, repo, "v2", image["manifest"])
    assert client.delete(f"/v2/{repo}/manifests/v1").status_code == 202
    assert client.get(f"/v2/{repo}/manifests/v1").status_code == 404
    assert client.get(f"/v2/{repo}/manifests/v2").status_code == 200
    assert client.get(f"/v2/{repo}/manifests/{image['digest']}").status_code == 200
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["v2"]


def test_delete_by_digest_removes_its_tags(client):
    repo = unique_repo("m")
    image = push_image(client, repo)
    push_manifest(client, repo, "v2", image["manifest"])
    assert client.delete(f"/v2/{repo}/manifests/{image['digest']}").status_code == 202
    assert client.get(f"/v2/{repo}/manifests/{image['digest']}").status_code == 404
    assert client.get(f"/v2/{repo}/manifests/v2").status_code == 404
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == []


def test_retag_moves_the_tag(client):
    repo = unique_repo("m")
    first = push_image(client, repo, seed="one")
    second = push_image(client, repo, tag="v1", seed="two")
    assert first["digest"] != second["digest"]
    response = client.get(f"/v2/{repo}/manifests/v1")
    assert response.headers["docker-content-digest"] == second["digest"]


def test_tags_are_sorted_and_paginated_with_link(client):
    repo = unique_repo("m")
    image = push_image(client, repo, tag="a")
    tags = ["b", "C", "v1.0", "v1.10", "v1.2", "latest"]
    for tag in tags:
        assert push_manifest(client, repo, tag, image["manifest"]).status_code == 201
    everything = sorted(["a", *tags])
    assert client.get(f"/v2/{repo}/tags/list").json() == {
        "name": repo,
        "tags": everything,
    }

    seen, url, params = [], f"/v2/{repo}/tags/list", {"n": "3"}
    for _ in range(10):
        page = client.get(url, params=params)
        assert page.status_code == 200
        seen += page.json()["tags"]
        link = page.headers.get("link")
        if link is None:
            break
        assert link.endswith('; rel="next"')
        url, params = link[1 : link.index(">")], None
    assert seen == everything

    after = client.get(f"/v2/{repo}/tags/list", params={"last": "b"}).json()["tags"]
    assert after == [t for t in everything if t > "b"]
    between = client.get(f"/v2/{repo}/tags/list", params={"last": "c0"}).json()["tags"]
    assert between == [t for t in everything if t > "c0"]
    empty = client.get(f"/v2/{repo}/tags/list", params={"n": "0"})
    assert empty.json()["tags"] == [] and "link" not in empty.headers


def test_page_size_is_capped(make_server):
    server = make_server({"limits": {"page_max_entries": 2}})
    with server.client() as client:
        repo = unique_repo("m")
        image = push_image(client, repo, tag="a")
        for tag in ("b", "c", "d"):
            push_manifest(client, repo, tag, image["manifest"])
        page = client.get(f"/v2/{repo}/tags/list", params={"n": "1000"})
        assert page.json()["tags"] == ["a", "b"]
        assert "n=2" in page.headers["link"]


def test_catalog_is_sorted_and_paginated(make_server):
    server = make_server()
    with server.client() as client:
        names = ["zeta/app", "alpha/app", "mid", "alpha/app2"]
        for name in names:
            push_image(client, name)
        assert client.get("/v2/_catalog").json() == {"repositories": sorted(names)}
        first = client.get("/v2/_catalog", params={"n": "2"})
        assert first.json()["repositories"] == sorted(names)[:2]
        link = first.headers["link"]
        rest = client.get(link[1 : link.index(">")])
        assert rest.json()["repositories"] == sorted(names)[2:]
        assert "link" not in rest.headers


@pytest.mark.parametrize(
    "method, path",
    [
        ("DELETE", "/v2/{repo}/manifests/{digest}"),
        ("DELETE", "/v2/{repo}/manifests/v1"),
        ("DELETE", "/v2/{repo}/blobs/{layer}"),
    ],
    ids=["end-9 by digest 405", "end-9 by tag 405", "end-10 blob 405"],
)
def test_deletes_can_be_switched_off(make_server, method, path):
    server = make_server({"deletes": False})
    with server.client() as client:
        repo = unique_repo("m")
        image = push_image(client, repo)
        url = path.format(
            repo=repo, digest=image["digest"], layer=sha256(image["layers"][0])
        )
        response = client.request(method, url)
        assert response.status_code == 405
        assert error_code(response) == "UNSUPPORTED"
        assert "DELETE" not in response.headers["allow"]
        assert client.get(f"/v2/{repo}/manifests/v1").status_code == 200


def test_unknown_repository_is_name_unknown(client):
    response = client.get(f"/v2/{unique_repo('nowhere')}/manifests/latest")
    assert response.status_code == 404
    assert error_code(response) == "NAME_UNKNOWN"


def test_method_not_allowed_names_the_allowed_methods(client):
    response = client.post(f"/v2/{unique_repo('m')}/manifests/v1")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, PUT, DELETE"
