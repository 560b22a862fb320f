"""Size limits on a running server: blobs, chunks, manifests, layers,
index children and bodies of requests that upload nothing, with and
without Content-Length, by PATCH, PUT and monolithic POST. Every refusal is
413 SIZE_INVALID naming the limit, and nothing of the upload stays on disk."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    error_code,
    image_manifest,
    push_blob,
    push_manifest,
    sha256,
    unique_repo,
)

BLOB_LIMIT = 64 * 1024
SETTINGS = {
    "limits": {
        "blob_max_bytes": BLOB_LIMIT,
        "chunk_max_bytes": 48 * 1024,
        "manifest_max_layers": 3,
        "index_max_children": 2,
        "overrides": [{"repositories": ["big/**"], "blob_max_bytes": 256 * 1024,
                       "chunk_max_bytes": 256 * 1024},
                      {"repositories": ["tiny/**"], "manifest_max_bytes": 300}],
    },
    # Quotas on, so that uploads reserve bytes: a refusal must give them back.
    "quotas": {"namespace_max_bytes": 64 * 1024 * 1024},
}  # fmt: skip


def reserved_and_stored(server, repo: str) -> tuple[int, int]:
    db = sqlite3.connect(server.data / "metadata.db")
    try:
        (reserved,) = db.execute(
            "SELECT coalesce(sum(reserved + reserved_namespace + reserved_user), 0) "
            "FROM uploads"
        ).fetchone()
        row = db.execute(
            "SELECT bytes FROM usage WHERE scope = 'repository' AND name = ?", (repo,)
        ).fetchone()
    finally:
        db.close()
    return reserved, row[0] if row else 0


@pytest.fixture
def limited(make_server):
    return make_server(SETTINGS)


def staged_files(server) -> list[Path]:
    return [p for p in (server.data / "uploads").iterdir() if p.is_file()]


def stream(data: bytes, piece: int = 8192):
    """A body without Content-Length (chunked transfer encoding)."""
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


def refused_413(response, words: str) -> None:
    assert response.status_code == 413, response.text
    assert error_code(response) == "SIZE_INVALID"
    assert words in response.json()["errors"][0]["message"]


@pytest.mark.parametrize("with_length", [True, False], ids=["length", "streamed"])
def test_monolithic_post_over_the_blob_limit(limited, with_length):
    data = b"m" * (BLOB_LIMIT + 1)
    repo = unique_repo("lim")
    with limited.client() as client:
        body = data if with_length else stream(data)
        response = client.post(
            f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, content=body
        )
        refused_413(response, "(limits.chunk_max_bytes)")
        assert client.head(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404
    assert staged_files(limited) == []
    assert reserved_and_stored(limited, repo) == (0, 0)


@pytest.mark.parametrize("with_length", [True, False], ids=["length", "streamed"])
def test_chunks_that_add_up_past_the_blob_limit_end_the_session(limited, with_length):
    repo = unique_repo("lim")
    chunk = b"c" * (40 * 1024)
    with limited.client() as client:
        started = client.post(f"/v2/{repo}/blobs/uploads/")
        location = started.headers["location"]
        first = client.patch(location, content=chunk if with_length else stream(chunk),
                             headers={"content-range": f"0-{len(chunk) - 1}"}
                             if with_length else {})  # fmt: skip
        assert first.status_code == 202, first.text
        second = client.patch(
            location,
            content=chunk if with_length else stream(chunk),
            headers={"content-range": f"{len(chunk)}-{2 * len(chunk) - 1}"}
            if with_length else {},
        )  # fmt: skip
        refused_413(
            second, f"may be at most {BLOB_LIMIT} bytes (limits.blob_max_bytes)"
        )
        # The session and its staged bytes are gone, and so is what it held
        # against the quota.
        assert client.get(location).status_code == 404
    assert staged_files(limited) == []
    assert reserved_and_stored(limited, repo) == (0, 0)


@pytest.mark.parametrize("with_length", [True, False], ids=["length", "streamed"])
def test_one_chunk_over_the_chunk_limit_by_put(limited, with_length):
    repo = unique_repo("lim")
    data = b"p" * (48 * 1024 + 1)
    with limited.client() as client:
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        closed = client.put(location, params={"digest": sha256(data)},
                            content=data if with_length else stream(data))  # fmt: skip
        refused_413(closed, "over the limit of 49152 bytes (limits.chunk_max_bytes)")
        # With a declared length, the detail is exact; a stream is stopped
        # at the first byte past the limit.
        assert closed.json()["errors"][0]["detail"] == {
            "limit": 48 * 1024, "size": len(data)
        }  # fmt: skip
        assert client.get(location).status_code == 404
    assert staged_files(limited) == []


def test_an_override_raises_the_limit_for_its_repositories(limited):
    data = b"b" * (200 * 1024)
    with limited.client() as client:
        assert push_blob(client, unique_repo("big/x"), data) == sha256(data)
        refused = client.post(
            f"/v2/{unique_repo('small')}/blobs/uploads/",
            params={"digest": sha256(data)}, content=data,
        )  # fmt: skip
        refused_413(refused, "limits.chunk_max_bytes")


def test_blobs_within_the_limits_still_push_in_chunks(limited):
    repo = unique_repo("lim")
    data = b"ok" * 30 * 1024  # 60 KiB in two chunks of 30 KiB
    with limited.client() as client:
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        half = len(data) // 2
        assert client.patch(location, content=stream(data[:half])).status_code == 202
        location = client.get(location).headers["location"]
        done = client.put(location, params={"digest": sha256(data)},
                          content=stream(data[half:]))  # fmt: skip
        assert done.status_code == 201, done.text
        assert client.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data


def test_manifest_with_too_many_layers_or_children(limited):
    repo = unique_repo("lim")
    with limited.client() as client:
        config = b'{"os":"linux"}'
        layers = [f"layer {i}".encode() for i in range(4)]
        for blob in (config, *layers):
            push_blob(client, repo, blob)
        refused = push_manifest(client, repo, "v1", image_manifest(config, layers))
        refused_413(refused, "lists 4 layers; manifests in")
        assert "at most 3 (limits.manifest_max_layers)" in refused.text
        children = []
        for i in range(3):
            body = image_manifest(config, layers[i : i + 1])
            assert push_manifest(client, repo, f"c{i}", body).status_code == 201
            children.append({"mediaType": OCI_MANIFEST, "digest": sha256(body),
                             "size": len(body)})  # fmt: skip
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                            "manifests": children}).encode()  # fmt: skip
        refused = push_manifest(client, repo, "multi", index, OCI_INDEX)
        refused_413(refused, "lists 3 child manifests")
        assert "(limits.index_max_children)" in refused.text
        assert client.get(f"/v2/{repo}/manifests/multi").status_code == 404


def test_a_body_on_a_request_that_uploads_nothing(limited):
    with limited.client() as client:
        response = client.request("GET", "/v2/", content=b"x" * (64 * 1024 + 1))
        refused_413(response, "(limits.body_max_bytes)")
        assert client.request("GET", "/v2/", content=b"x" * 100).status_code == 200


def test_a_mount_cannot_bring_a_blob_over_the_targets_limit(limited):
    data = b"B" * (200 * 1024)
    with limited.client() as client:
        digest = push_blob(client, "big/source", data)
        for params in ({"mount": digest, "from": "big/source"}, {"mount": digest}):
            response = client.post("/v2/small/target/blobs/uploads/", params=params)
            # Not mounted: a session opens instead, as the spec says for a
            # mount that cannot be done, and uploading hits the limit.
            assert response.status_code == 202, response.text
            assert client.delete(response.headers["location"]).status_code == 204
        assert client.head(f"/v2/small/target/blobs/{digest}").status_code == 404


@pytest.mark.parametrize("with_length", [True, False], ids=["length", "streamed"])
def test_a_manifest_over_its_limit_names_the_setting(limited, with_length):
    repo = unique_repo("tiny/lim")
    manifest = image_manifest(b"{}", [], annotations={"pad": "x" * 400})
    with limited.client() as client:
        refused = client.put(
            f"/v2/{repo}/manifests/v1",
            content=manifest if with_length else stream(manifest, 100),
            headers={"content-type": OCI_MANIFEST},
        )
        refused_413(refused, "the limit")
        assert "300 bytes (limits.overrides[1].manifest_max_bytes)" in refused.text
        assert refused.json()["errors"][0]["detail"]["limit"] == 300
        assert client.get(f"/v2/{repo}/manifests/v1").status_code == 404
