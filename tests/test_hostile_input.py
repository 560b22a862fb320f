"""Input an attacker chose: each case must get a clear 4xx (or be ignored
where the RFC says so), never a 5xx, and must leave the store consistent."""

from __future__ import annotations

import http.client
import json
import os
import stat
from urllib.parse import urlencode

import pytest

from tests.helpers import (
    EMPTY_JSON,
    OCI_MANIFEST,
    descriptor,
    error_code,
    push_blob,
    push_image,
    push_manifest,
    sha256,
    unique_repo,
)

NINES = "9" * 4301


@pytest.mark.parametrize(
    "method, path, headers, params, expected",
    [
        ("GET", "/v2/_catalog", {}, {"n": "\u00b2"}, 400),
        ("GET", "/v2/{repo}/tags/list", {}, {"n": NINES}, 400),
        ("GET", "/v2/{repo}/blobs/{layer}", {"range": "bytes=\u00b2-"}, {}, 200),
        ("GET", "/v2/{repo}/blobs/{layer}", {"range": "bytes=-\u00b9"}, {}, 200),
        ("GET", "/v2/{repo}/blobs/{layer}", {"range": f"bytes=0-{NINES}"}, {}, 200),
        ("PATCH", "{upload}", {"content-range": "\u00b2-\u00b3"}, {}, 416),
        ("PATCH", "{upload}", {"content-range": f"0-{NINES}"}, {}, 416),
        (
            "PUT",
            "{upload}",
            {"content-range": "\u00b9-\u00b9"},
            {"digest": sha256(b"")},
            416,
        ),
        ("PATCH", "{upload}", {"content-length": "\u00b3"}, {}, 400),
    ],
    ids=[
        "catalog n superscript",
        "tags n 4301 digits",
        "range superscript start",
        "range superscript suffix",
        "range 4301 digits",
        "content-range superscript",
        "content-range 4301 digits",
        "final content-range superscript",
        "content-length superscript",
    ],
)
def test_numbers_outside_ascii_or_64_bits_are_refused(
    server, client, method, path, headers, params, expected
):
    repo = unique_repo("hostile")
    image = push_image(client, repo)
    upload = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    url = path.format(repo=repo, layer=sha256(image["layers"][0]), upload=upload)
    if params:
        url += "?" + urlencode(params)
    # Raw, so that header bytes such as 0xB2 ('²' in latin-1) go out as sent.
    conn = http.client.HTTPConnection(server.host, timeout=30)
    conn.putrequest(method, url)
    for name, value in headers.items():
        conn.putheader(name, value.encode("latin-1"))
    if "content-length" not in headers:
        conn.putheader("content-length", "1")
    conn.endheaders()
    conn.send(b"x")
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == expected, body


def _raw_manifest_cases():
    config = descriptor(EMPTY_JSON, b"{}")
    good = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [],
    }

    def dump(**changes):
        return json.dumps({**good, **changes}).encode()

    return {
        "deep nesting": b"[" * 100000 + b"]" * 100000,
        "NaN annotation": dump(annotations={"a": 1}).replace(b"1", b"NaN"),
        "Infinity size": json.dumps(good)
        .encode()
        .replace(b'"size": 2', b'"size": Infinity'),
        "object annotation": dump(annotations={"a": {"b": "c"}}),
        "descriptor annotation not a string": dump(
            config={**config, "annotations": {"a": 1}}
        ),
        "schemaVersion 2.0": dump(schemaVersion=2.0),
        "byte-order mark": b"\xef\xbb\xbf" + dump(),
        "UTF-16": dump().decode().encode("utf-16"),
        "duplicate keys": dump()[:-1] + b', "layers": []}',
        "not UTF-8": dump(annotations={"a": "b"}).replace(b'"b"', b'"\xff"'),
    }


@pytest.mark.parametrize("name", list(_raw_manifest_cases()))
def test_manifests_that_strict_clients_would_read_differently_are_refused(client, name):
    repo = unique_repo("hostile")
    push_blob(client, repo, b"{}")
    body = _raw_manifest_cases()[name]
    response = push_manifest(client, repo, "v1", body)
    assert response.status_code == 400, response.text
    assert error_code(response) == "MANIFEST_INVALID"
    assert client.get(f"/v2/{repo}/manifests/v1").status_code == 404


def test_deleted_blob_cannot_be_mounted_back_without_from(client):
    repo, thief = unique_repo("hostile"), unique_repo("hostile")
    digest = push_blob(client, repo, b"secret bytes")
    assert client.delete(f"/v2/{repo}/blobs/{digest}").status_code == 202
    response = client.post(f"/v2/{thief}/blobs/uploads/", params={"mount": digest})
    assert response.status_code == 202
    assert client.get(f"/v2/{thief}/blobs/{digest}").status_code == 404


def test_referrers_pages_stay_small_however_large_the_annotations(make_server):
    server = make_server({"limits": {"manifest_max_bytes": 64 * 1024}})
    with server.client() as client:
        repo = unique_repo("hostile")
        image = push_image(client, repo)
        push_blob(client, repo, b"{}")
        subject = descriptor(OCI_MANIFEST, image["manifest"])
        pushed = set()
        for i in range(6):
            artifact = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "artifactType": "application/x-big",
                    "config": descriptor(EMPTY_JSON, b"{}"),
                    "layers": [],
                    "subject": subject,
                    "annotations": {"pad": f"{i}" * 30000},
                }
            ).encode()
            assert (
                push_manifest(client, repo, sha256(artifact), artifact).status_code
                == 201
            )
            pushed.add(sha256(artifact))
        seen, url, pages = [], f"/v2/{repo}/referrers/{image['digest']}", 0
        while url and pages < 10:
            page = client.get(url)
            assert page.status_code == 200
            assert len(page.content) <= 64 * 1024 + 31000
            seen += [m["digest"] for m in page.json()["manifests"]]
            link = page.headers.get("link")
            url = link[1 : link.index(">")] if link else None
            pages += 1
        assert pages >= 3
        assert sorted(seen) == sorted(pushed)


def test_text_logs_cannot_be_forged_through_the_path(make_server):
    server = make_server({"log": {"format": "text"}})
    with server.client() as client:
        client.get("/v2/x/blobs/sha256:%0Aerror quaylock: forged line")
    lines = server.log().splitlines()
    assert not any(line.startswith("error quaylock: forged") for line in lines)


def test_data_files_are_private(server):
    for path in (server.data / "metadata.db", server.data / "blobs"):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
