"""Upload sessions on a running server: they belong to whoever opened
them, are limited per subject and per client address, share a cap on
staged bytes, and expire when idle, their bytes purged in the background."""

from __future__ import annotations

import time

import pytest

from tests.helpers import OCI_MANIFEST, error_code, image_manifest, sha256, unique_repo
from tests.test_auth_clients import PASSWORD, add_user
from tests.test_limits import staged_files, stream


def bearer(server, credentials, repository: str) -> dict:
    with server.client() as client:
        token = client.get(
            "/v2/token",
            params={"service": "quaylock",
                    "scope": f"repository:{repository}:pull,push,delete"},
            auth=credentials,
        ).json()["token"]  # fmt: skip
    return {"authorization": f"Bearer {token}"}


def test_a_session_belongs_to_the_subject_that_opened_it(make_server):
    rule = {"subjects": ["user:alice", "user:bob"], "repositories": ["shared/**"],
            "actions": ["pull", "push"]}  # fmt: skip
    server = make_server({"auth": {"mode": "token", "rules": [rule]}})
    add_user(server, "alice")
    add_user(server, "bob")
    repo = unique_repo("shared/app")
    alice = bearer(server, ("alice", PASSWORD["alice"]), repo)
    bob = bearer(server, ("bob", PASSWORD["bob"]), repo)
    data = b"alice's bytes"
    with server.client() as client:
        location = client.post(f"/v2/{repo}/blobs/uploads/", headers=alice).headers[
            "location"
        ]
        # bob may push to the repository, but not into alice's session.
        for method, extra in (("GET", {}), ("PATCH", {"content": b"evil"}),
                              ("PUT", {"params": {"digest": sha256(b"evil")}}),
                              ("DELETE", {})):  # fmt: skip
            answer = client.request(method, location, headers=bob, **extra)
            assert answer.status_code == 404, (method, answer.text)
            assert error_code(answer) == "BLOB_UPLOAD_UNKNOWN"
        done = client.put(location, headers=alice, params={"digest": sha256(data)},
                          content=data)  # fmt: skip
        assert done.status_code == 201, done.text


def test_open_sessions_are_limited_per_address(make_server):
    server = make_server({"uploads": {"max_sessions_per_address": 3}})
    repo = unique_repo("sessions")
    with server.client() as client:
        opened = [client.post(f"/v2/{repo}/blobs/uploads/") for _ in range(3)]
        assert [r.status_code for r in opened] == [202] * 3
        refused = client.post(f"/v2/{repo}/blobs/uploads/")
        assert refused.status_code == 429
        assert error_code(refused) == "TOOMANYREQUESTS"
        assert refused.headers["retry-after"] == "60"
        message = refused.json()["errors"][0]["message"]
        assert "3 open upload sessions; the limit is 3" in message
        assert "uploads.max_sessions_per_address" in message
        assert client.delete(opened[0].headers["location"]).status_code == 204
        assert client.post(f"/v2/{repo}/blobs/uploads/").status_code == 202


def test_open_sessions_are_limited_per_subject(make_server):
    server = make_server({"auth": {"mode": "token"},
                          "uploads": {"max_sessions_per_subject": 2}})  # fmt: skip
    add_user(server, "alice")
    repo = "alice/app"
    headers = bearer(server, ("alice", PASSWORD["alice"]), repo)
    with server.client() as client:
        for _ in range(2):
            opened = client.post(f"/v2/{repo}/blobs/uploads/", headers=headers)
            assert opened.status_code == 202
        refused = client.post(f"/v2/{repo}/blobs/uploads/", headers=headers)
        assert refused.status_code == 429
        assert "uploads.max_sessions_per_subject" in refused.text


def test_idle_sessions_expire_and_their_bytes_are_purged(make_server):
    server = make_server({"uploads": {"idle_seconds": 1, "purge_interval_seconds": 1}})
    repo = unique_repo("idle")
    with server.client() as client:
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        assert client.patch(location, content=b"x" * 4096).status_code == 202
        assert len(staged_files(server)) == 1
    deadline = time.monotonic() + 10
    while staged_files(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert staged_files(server) == [], "the purge left the staged bytes"
    with server.client() as client:
        assert client.get(location).status_code == 404
        assert client.patch(location, content=b"more").status_code == 404


def test_staged_bytes_of_all_sessions_share_one_cap(make_server):
    server = make_server({"uploads": {"staged_max_bytes": 100 * 1024}})
    repo = unique_repo("staged")
    with server.client() as client:
        first = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        assert client.patch(first, content=b"a" * (80 * 1024)).status_code == 202
        second = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        declared = client.patch(second, content=b"b" * (40 * 1024))
        assert declared.status_code == 503
        assert error_code(declared) == "UNAVAILABLE"
        assert declared.headers["retry-after"] == "60"
        assert "uploads.staged_max_bytes" in declared.text
        third = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        streamed = client.patch(third, content=stream(b"c" * (40 * 1024)))
        assert streamed.status_code == 503
        # Finishing the first upload frees its staged bytes for others.
        data = b"a" * (80 * 1024)
        assert client.put(first, params={"digest": sha256(data)}).status_code == 201
        assert client.patch(second, content=b"b" * (40 * 1024)).status_code == 202


def test_below_the_disk_floor_uploads_wait_and_pulls_go_on(tmp_path):
    from tests.conftest import start_server

    data = b"pushed before the disk filled"
    repo = unique_repo("floor")
    roomy = start_server(
        tmp_path / "srv", {"storage": {"min_free_bytes": 0, "min_free_percent": 0}}
    )
    try:
        with roomy.client() as client:
            digest = client.post(
                f"/v2/{repo}/blobs/uploads/",
                params={"digest": sha256(data)},
                content=data,
            )
            assert digest.status_code == 201
    finally:
        roomy.stop()
    # The same data, with a floor no disk here can clear.
    full = start_server(tmp_path / "srv", {"storage": {"min_free_percent": 99}})
    try:
        with full.client() as client:
            refused = client.post(f"/v2/{repo}/blobs/uploads/")
            assert refused.status_code == 507
            assert error_code(refused) == "UNAVAILABLE"
            assert refused.headers["retry-after"] == "60"
            assert "storage.min_free_percent 99" in refused.text
            monolithic = client.post(
                f"/v2/{repo}/blobs/uploads/",
                params={"digest": sha256(b"x")},
                content=b"x",
            )
            assert monolithic.status_code == 507
            # Manifests go to the database, on the same disk: they wait too.
            manifest = client.put(
                f"/v2/{repo}/manifests/v1",
                content=image_manifest(data, []),
                headers={"content-type": OCI_MANIFEST},
            )
            assert manifest.status_code == 507, manifest.text
            assert client.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data
            metrics = client.get("/metrics").text
            assert "quaylock_disk_floor_reached 1" in metrics
            ready = client.get("/readyz")
            assert ready.status_code == 200  # pulls go on
            assert ready.json()["uploads"] == "refused: disk floor"
            assert client.get("/healthz").json() == {"status": "ok"}
    finally:
        full.stop()
    assert staged_files(full) == []


def test_finishing_uploads_works_at_the_staging_cap(make_server):
    server = make_server({"uploads": {"staged_max_bytes": 64 * 1024}})
    repo = unique_repo("cap")
    data = b"f" * (64 * 1024)
    with server.client() as client:
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        assert client.patch(location, content=data).status_code == 202
        # Staging is full; finishing (which frees it) must still work.
        assert client.post(f"/v2/{repo}/blobs/uploads/", params={
            "digest": sha256(b"x")}, content=b"x").status_code == 503  # fmt: skip
        location = client.get(location).headers["location"]
        done = client.put(location, params={"digest": sha256(data)})
        assert done.status_code == 201, done.text
        assert client.post(f"/v2/{repo}/blobs/uploads/", params={
            "digest": sha256(b"x")}, content=b"x").status_code == 201  # fmt: skip


def test_the_purge_leaves_a_session_that_a_request_streams_into(make_server):
    server = make_server({"uploads": {"idle_seconds": 2, "purge_interval_seconds": 1}})
    repo = unique_repo("slow")
    pieces = 6

    def slowly():
        for _ in range(pieces):
            time.sleep(0.8)
            yield b"s" * 1024

    with server.client() as client:
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        # About five seconds of streaming: past idle_seconds since the
        # session last committed anything.
        streamed = client.patch(location, content=slowly())
        assert streamed.status_code == 202, streamed.text
        assert streamed.headers["range"] == f"0-{pieces * 1024 - 1}"


def test_session_limits_hold_across_workers(make_server):
    import concurrent.futures

    server = make_server({"server": {"workers": 3},
                          "uploads": {"max_sessions_per_address": 4}})  # fmt: skip
    repo = unique_repo("race")

    def start(_) -> int:
        with server.client() as client:
            return client.post(f"/v2/{repo}/blobs/uploads/").status_code

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(start, range(40), timeout=120))
    assert statuses.count(202) == 4, statuses
    assert statuses.count(429) == 36, statuses


def slowly(data: bytes, piece: int = 16 * 1024, pause: float = 0.05):
    """A body that takes a while to arrive, so that uploads overlap."""
    for i in range(0, len(data), piece):
        time.sleep(pause)
        yield data[i : i + piece]


@pytest.mark.parametrize("with_length", [True, False], ids=["length", "streamed"])
def test_parallel_chunks_cannot_together_pass_the_staging_cap(make_server, with_length):
    import concurrent.futures

    chunk = 128 * 1024
    cap = 2 * chunk + chunk // 2  # room for two chunks, not three
    server = make_server({"uploads": {"staged_max_bytes": cap}})
    repo = unique_repo("overlap")

    def upload(i: int) -> tuple[int, str]:
        data = bytes([i]) * chunk
        headers = {"content-length": str(chunk)} if with_length else {}
        with server.client() as client:
            location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
            response = client.patch(location, content=slowly(data), headers=headers)
            return response.status_code, location

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(upload, range(8), timeout=120))
    statuses = [status for status, _ in results]
    assert set(statuses) <= {202, 503}, statuses
    assert 1 <= statuses.count(202) <= 2, statuses
    assert sum(p.stat().st_size for p in staged_files(server)) <= cap
    # A refused chunk leaves its session open and empty, to try again.
    with server.client() as client:
        for status, location in results:
            if status == 503:
                assert client.get(location).headers["range"] == "0-0"


def test_parallel_chunks_cannot_together_pass_the_disk_floor(tmp_path):
    import concurrent.futures
    import os

    from tests.conftest import start_server

    chunk = 2 * 1024 * 1024
    (tmp_path / "srv").mkdir()
    stat = os.statvfs(tmp_path)
    free = stat.f_bavail * stat.f_frsize
    # About three chunks above the floor, less what the server writes itself.
    floor = free - 3 * chunk - chunk // 2
    server = start_server(
        tmp_path / "srv", {"storage": {"min_free_bytes": floor, "min_free_percent": 0}}
    )
    repo = unique_repo("floor")

    def upload(i: int) -> int:
        data = bytes([i]) * chunk
        with server.client() as client:
            location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
            response = client.patch(
                location,
                content=slowly(data, 256 * 1024),
                headers={"content-length": str(chunk)},
            )
            assert response.status_code != 507 or error_code(response) == "UNAVAILABLE"
            return response.status_code

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(upload, range(8), timeout=120))
    finally:
        server.stop()
    assert set(statuses) <= {202, 507}, statuses
    # Each chunk fits alone; together only those the headroom holds pass
    # (a little slack for other writers on this disk meanwhile).
    assert statuses.count(202) <= 4, statuses
    assert 507 in statuses, statuses


def test_a_blob_larger_than_the_staging_cap_is_refused_for_good(make_server):
    server = make_server({"uploads": {"staged_max_bytes": 100 * 1024}})
    repo = unique_repo("huge")
    with server.client() as client:
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        assert client.patch(location, content=b"a" * (60 * 1024)).status_code == 202
        # Waiting cannot help this one: it would hold 120 KiB by itself.
        refused = client.patch(location, content=b"b" * (60 * 1024))
        assert refused.status_code == 413, refused.text
        assert error_code(refused) == "SIZE_INVALID"
        assert "past uploads.staged_max_bytes (102400 bytes)" in refused.text
        assert "retry-after" not in refused.headers
        assert client.get(location).status_code == 404  # the session is gone
    assert staged_files(server) == []


def raw_request(server, head: str, body: bytes, pause: float, more: bytes = b""):
    """Send `head` and `body`, wait `pause` seconds, send `more`; return the
    status line and when it came (seconds after the first bytes)."""
    import socket

    host, port = server.host.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(head.encode() + body)
        for byte in more:
            time.sleep(pause)
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break  # the server gave up on us: what we want to see
        answer = sock.recv(65536).decode(errors="replace")
        return answer.split("\r\n", 1)[0], time.monotonic() - started, answer


@pytest.mark.parametrize("how", ["stalled", "trickled"])
def test_a_stalled_or_trickled_body_gives_its_reservation_back(make_server, how):
    server = make_server({
        "server": {"body_timeout_seconds": 2, "body_min_bytes_per_second": 1024},
        "uploads": {"staged_max_bytes": 1000 * 1024},
    })  # fmt: skip
    repo = unique_repo("stall")
    with server.client() as client:
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    declared = 900 * 1024
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: {server.host}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
    )
    # Stalled: ten bytes, then nothing. Trickled: a byte every 0.3 s, far
    # below 1 KiB a second.
    more = b"" if how == "stalled" else b"t" * 30
    status, took, answer = raw_request(server, head, b"0123456789", 0.3, more)
    assert status == "HTTP/1.1 408 Request Timeout", answer
    assert "REQUEST_TIMEOUT" in answer
    assert "server.body_" in answer
    assert 1.5 < took < 15
    with server.client() as client:
        # The 900 KiB it reserved are free again for someone else.
        other = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        data = b"o" * (800 * 1024)
        done = client.put(other, params={"digest": sha256(data)}, content=data)
        assert done.status_code == 201, done.text
        # Its session stays, empty, for the client to try again.
        assert client.get(location).headers["range"] == "0-0"


def test_the_purge_pages_past_sessions_that_are_busy(tmp_path):
    import asyncio

    from quaylock.metadata.store import open_store

    store = open_store(f"sqlite:///{tmp_path}/m.db")
    try:
        for i in range(5):
            asyncio.run(store.create_upload(f"u{i}", "r", "anonymous", "c"))
        later = time.time() + 1
        pages = [store.expired_uploads(later, 2)]
        while len(pages[-1]) == 2:
            pages.append(store.expired_uploads(later, 2, pages[-1][-1]))
        assert pages == [["u0", "u1"], ["u2", "u3"], ["u4"]]
    finally:
        store.close()


def test_an_expired_session_whose_file_is_gone_is_purged(make_server):
    # A session whose staged file was stored as a blob that could not be
    # linked keeps only its row; the purge must still take it.
    server = make_server({"uploads": {"idle_seconds": 1, "purge_interval_seconds": 1}})
    repo = unique_repo("gone")
    with server.client() as client:
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        assert client.patch(location, content=b"z" * 4096).status_code == 202
        for path in staged_files(server):
            path.unlink()
        assert staged_bytes(server) == (4096, 0)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and staged_bytes(server) != (0, 0):
            time.sleep(0.5)
        assert staged_bytes(server) == (0, 0)
        assert client.get(location).status_code == 404
    assert "expired upload sessions purged" in server.log()


def staged_bytes(server) -> tuple[int, int]:
    import sqlite3

    db = sqlite3.connect(server.data / "metadata.db")
    try:
        row = db.execute("SELECT bytes, in_flight FROM staged WHERE subject = ''")
        return tuple(row.fetchone() or (0, 0))
    finally:
        db.close()


def test_a_slow_body_holds_only_what_it_has_sent(make_server):
    server = make_server({
        "server": {"body_timeout_seconds": 5, "body_min_bytes_per_second": 1024},
        "uploads": {"staged_max_bytes": 1000 * 1024},
    })  # fmt: skip
    repo = unique_repo("slowly")
    declared = 900 * 1024
    with server.client() as client:
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]

    def trickle():
        # Just above the least rate: 2 KiB every half second, for 3 s.
        for _ in range(6):
            time.sleep(0.5)
            yield b"t" * 2048

    import contextlib
    import threading

    def slow_patch():
        # The body ends short of its declared length on purpose: only what
        # it holds meanwhile matters.
        with server.client() as slow, contextlib.suppress(Exception):
            slow.patch(location, content=trickle(),
                       headers={"content-length": str(declared)})  # fmt: skip

    thread = threading.Thread(target=slow_patch)
    thread.start()
    try:
        time.sleep(1.5)
        held, in_flight = staged_bytes(server)
        # A step of reservation, not the 900 KiB it declared.
        assert 0 < in_flight <= 64 * 1024, (held, in_flight)
        with server.client() as client:
            data = b"o" * (800 * 1024)
            done = client.post(f"/v2/{repo}/blobs/uploads/",
                               params={"digest": sha256(data)}, content=data)  # fmt: skip
            assert done.status_code == 201, done.text
    finally:
        thread.join(30)


def test_a_session_a_chunk_streams_into_still_counts_against_the_limit(make_server):
    server = make_server({
        "uploads": {"idle_seconds": 1, "max_sessions_per_address": 2},
        "server": {"body_min_bytes_per_second": 1024},
    })  # fmt: skip
    repo = unique_repo("live")
    with server.client() as client:
        streaming = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]

    def steady():
        for _ in range(10):  # 4 KiB a second for 2.5 s: well past idle_seconds
            time.sleep(0.25)
            yield b"s" * 1024

    import threading

    result = {}

    def patch():
        with server.client() as slow:
            result["status"] = slow.patch(streaming, content=steady()).status_code

    thread = threading.Thread(target=patch)
    thread.start()
    try:
        time.sleep(1.8)  # the streaming session was last touched > 1 s ago
        with server.client() as client:
            assert client.post(f"/v2/{repo}/blobs/uploads/").status_code == 202
            refused = client.post(f"/v2/{repo}/blobs/uploads/")
            assert refused.status_code == 429, refused.text
    finally:
        thread.join(30)
    assert result["status"] == 202
