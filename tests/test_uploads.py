"""Upload sessions over a real socket: chunk order, atomic chunks, status,
cancel, digest checks and mounts."""

from __future__ import annotations

import hashlib
import http.client
import time

from tests.helpers import error_code, push_blob, sha256, unique_repo

DATA = bytes(range(256)) * 40  # 10,240 bytes


def start(client, repo) -> str:
    response = client.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202
    assert response.headers["location"].startswith(f"/v2/{repo}/blobs/uploads/")
    assert response.headers["range"] == "0-0"
    assert response.headers["docker-upload-uuid"]
    return response.headers["location"]


def patch(client, location, data, start=None, end=None):
    headers = {"content-type": "application/octet-stream"}
    if start is not None:
        headers["content-range"] = (
            f"{start}-{start + len(data) - 1 if end is None else end}"
        )
    return client.patch(location, content=data, headers=headers)


def status_range(client, location) -> str:
    response = client.get(location)
    assert response.status_code == 204
    return response.headers["range"]


def test_chunked_upload_in_order_stores_exact_bytes(client):
    repo = unique_repo("up")
    location = start(client, repo)
    for offset in range(0, len(DATA), 4096):
        chunk = DATA[offset : offset + 4096]
        response = patch(client, location, chunk, offset)
        assert response.status_code == 202, response.text
        assert response.headers["range"] == f"0-{offset + len(chunk) - 1}"
        location = response.headers["location"]
    done = client.put(location, params={"digest": sha256(DATA)})
    assert done.status_code == 201, done.text
    assert done.headers["docker-content-digest"] == sha256(DATA)
    assert done.headers["location"] == f"/v2/{repo}/blobs/{sha256(DATA)}"
    assert client.get(f"/v2/{repo}/blobs/{sha256(DATA)}").content == DATA


def test_upload_status_range_is_never_negative(client):
    location = start(client, unique_repo("up"))
    assert status_range(client, location) == "0-0"
    patch(client, location, b"a", 0)
    assert status_range(client, location) == "0-0"
    patch(client, location, b"bc", 1)
    assert status_range(client, location) == "0-2"


def test_out_of_order_chunk_is_refused_and_changes_nothing(client):
    location = start(client, unique_repo("up"))
    assert patch(client, location, DATA[:100], 0).status_code == 202
    gap = patch(client, location, DATA[200:300], 200)
    assert gap.status_code == 416
    assert error_code(gap) == "RANGE_INVALID"
    assert gap.headers["range"] == "0-99"
    overlap = patch(client, location, DATA[50:150], 50)
    assert overlap.status_code == 416
    assert status_range(client, location) == "0-99"
    # The session still works: the right chunk goes on where it stopped.
    assert patch(client, location, DATA[100:], 100).status_code == 202
    assert client.put(location, params={"digest": sha256(DATA)}).status_code == 201


def test_final_put_chunk_out_of_order_is_refused(client):
    repo = unique_repo("up")
    location = start(client, repo)
    patch(client, location, DATA[:100], 0)
    response = client.put(
        location,
        params={"digest": sha256(DATA)},
        content=DATA[150:],
        headers={"content-range": f"150-{len(DATA) - 1}"},
    )
    assert response.status_code == 416
    assert status_range(client, location) == "0-99"
    assert client.head(f"/v2/{repo}/blobs/{sha256(DATA)}").status_code == 404
    response = client.put(
        location,
        params={"digest": sha256(DATA)},
        content=DATA[100:],
        headers={"content-range": f"100-{len(DATA) - 1}"},
    )
    assert response.status_code == 201, response.text


def test_chunk_shorter_than_its_range_is_discarded(client):
    location = start(client, unique_repo("up"))
    response = patch(client, location, DATA[:100], 0, end=199)
    assert response.status_code in (400, 416)
    assert status_range(client, location) == "0-0"


def test_streamed_patch_without_content_range(client):
    repo = unique_repo("up")
    location = start(client, repo)

    def body():
        for offset in range(0, len(DATA), 1000):
            yield DATA[offset : offset + 1000]

    response = client.patch(location, content=body())
    assert response.status_code == 202
    assert response.headers["range"] == f"0-{len(DATA) - 1}"
    assert client.put(location, params={"digest": sha256(DATA)}).status_code == 201
    assert client.get(f"/v2/{repo}/blobs/{sha256(DATA)}").content == DATA


def test_wrong_digest_stores_nothing_and_keeps_session(client):
    repo = unique_repo("up")
    location = start(client, repo)
    patch(client, location, DATA, 0)
    wrong = sha256(b"something else")
    response = client.put(location, params={"digest": wrong})
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
    assert client.head(f"/v2/{repo}/blobs/{wrong}").status_code == 404
    assert client.head(f"/v2/{repo}/blobs/{sha256(DATA)}").status_code == 404
    assert status_range(client, location) == f"0-{len(DATA) - 1}"
    assert client.put(location, params={"digest": sha256(DATA)}).status_code == 201


def test_wrong_digest_with_final_chunk_discards_that_chunk(client):
    location = start(client, unique_repo("up"))
    patch(client, location, DATA[:100], 0)
    response = client.put(
        location, params={"digest": sha256(b"nope")}, content=DATA[100:]
    )
    assert response.status_code == 400
    assert status_range(client, location) == "0-99"


def test_put_without_digest_is_refused(client):
    location = start(client, unique_repo("up"))
    response = client.put(location, content=b"abc")
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


def test_cancel_ends_the_session(client):
    location = start(client, unique_repo("up"))
    patch(client, location, DATA[:10], 0)
    assert client.delete(location).status_code == 204
    response = client.get(location)
    assert response.status_code == 404
    assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"


def test_session_belongs_to_its_repository(client):
    location = start(client, unique_repo("up"))
    upload_id = location.rsplit("/", 1)[1]
    response = client.get(f"/v2/{unique_repo('up')}/blobs/uploads/{upload_id}")
    assert response.status_code == 404


def test_sha512_upload_in_chunks(client):
    repo = unique_repo("up")
    digest = "sha512:" + hashlib.sha512(DATA).hexdigest()
    location = start(client, repo)
    patch(client, location, DATA[:5000], 0)
    response = client.put(location, params={"digest": digest}, content=DATA[5000:])
    assert response.status_code == 201, response.text
    head = client.head(f"/v2/{repo}/blobs/{digest}")
    assert head.status_code == 200
    assert head.headers["docker-content-digest"] == digest
    assert client.get(f"/v2/{repo}/blobs/{digest}").content == DATA


def test_empty_blob(client):
    repo = unique_repo("up")
    response = client.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(b"")}, content=b""
    )
    assert response.status_code == 201
    head = client.head(f"/v2/{repo}/blobs/{sha256(b'')}")
    assert head.headers["content-length"] == "0"


def test_mount_makes_blob_visible_without_bytes(client):
    source, target = unique_repo("up"), unique_repo("up")
    digest = push_blob(client, source, DATA)
    assert client.head(f"/v2/{target}/blobs/{digest}").status_code == 404
    response = client.post(
        f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source}
    )
    assert response.status_code == 201
    assert response.headers["location"] == f"/v2/{target}/blobs/{digest}"
    assert response.headers["docker-content-digest"] == digest
    assert client.get(f"/v2/{target}/blobs/{digest}").content == DATA


def test_failed_mount_opens_a_session(client):
    repo = unique_repo("up")
    response = client.post(
        f"/v2/{repo}/blobs/uploads/", params={"mount": sha256(b"absent"), "from": "a/b"}
    )
    assert response.status_code == 202
    assert status_range(client, response.headers["location"]) == "0-0"


def test_blob_head_matches_get(client):
    repo = unique_repo("up")
    digest = push_blob(client, repo, DATA)
    get = client.get(f"/v2/{repo}/blobs/{digest}")
    head = client.head(f"/v2/{repo}/blobs/{digest}")
    for name in ("docker-content-digest", "content-length", "content-type"):
        assert head.headers[name] == get.headers[name]
    assert head.content == b""


def test_blob_ranges(client):
    repo = unique_repo("up")
    digest = push_blob(client, repo, DATA)
    url = f"/v2/{repo}/blobs/{digest}"
    response = client.get(url, headers={"range": "bytes=100-199"})
    assert response.status_code == 206
    assert response.content == DATA[100:200]
    assert response.headers["content-range"] == f"bytes 100-199/{len(DATA)}"
    suffix = client.get(url, headers={"range": "bytes=-10"})
    assert suffix.status_code == 206 and suffix.content == DATA[-10:]
    open_end = client.get(url, headers={"range": f"bytes={len(DATA) - 5}-"})
    assert open_end.content == DATA[-5:]
    past = client.get(url, headers={"range": f"bytes={len(DATA)}-"})
    assert past.status_code == 416
    assert past.headers["content-range"] == f"bytes */{len(DATA)}"


def test_blob_deleted_from_one_repository_stays_in_another(client):
    first, second = unique_repo("up"), unique_repo("up")
    digest = push_blob(client, first, DATA)
    push_blob(client, second, DATA)
    assert client.delete(f"/v2/{first}/blobs/{digest}").status_code == 202
    assert client.head(f"/v2/{first}/blobs/{digest}").status_code == 404
    assert client.get(f"/v2/{second}/blobs/{digest}").content == DATA


def test_second_writer_to_a_session_is_refused_across_workers(make_server):
    server = make_server({"server": {"workers": 2}})
    repo = unique_repo("up")
    with server.client() as client:
        location = start(client, repo)
    # The first writer sends half a chunk and waits, holding the session.
    first = http.client.HTTPConnection(server.host, timeout=30)
    first.putrequest("PATCH", location)
    first.putheader("Content-Range", f"0-{len(DATA) - 1}")
    first.putheader("Content-Length", str(len(DATA)))
    first.endheaders()
    first.send(DATA[:5000])
    time.sleep(0.3)
    # Fresh connections spread over both workers; each must be refused.
    for _ in range(4):
        with server.client() as other:
            response = patch(other, location, b"intruder", 0)
            assert response.status_code == 400, response.text
            assert error_code(response) == "BLOB_UPLOAD_INVALID"
            assert "busy" in response.json()["errors"][0]["message"]
    first.send(DATA[5000:])
    assert first.getresponse().status == 202
    first.close()
    with server.client() as client:
        done = client.put(location, params={"digest": sha256(DATA)})
        assert done.status_code == 201, done.text
        assert client.get(f"/v2/{repo}/blobs/{sha256(DATA)}").content == DATA
