"""Request floods against a real server: a noisy neighbour at twenty times
its rate limit while another user pushes and pulls with skopeo, five hundred
connections that send their headers a byte at a time, and the limits on
requests in flight."""

from __future__ import annotations

import contextlib
import selectors
import socket
import statistics
import threading
import time

import httpx
import pytest

from tests.helpers import push_blob, sha256, unique_repo
from tests.test_auth_clients import (
    PASSWORD,
    add_user,
    creds,
    dir_files,
    expected_dir_files,
)
from tests.test_interop import Skopeo, build_image, docker_ref
from tests.test_server import rss_kib
from tests.test_upload_sessions import bearer

NOISE_SECONDS = 30


def skopeo_round(skopeo: Skopeo, server, image, tmp_path, n: int) -> float:
    """Push the image under a new tag and pull it back; return seconds."""
    alice = creds("alice", PASSWORD["alice"])
    reference = docker_ref(server, "alice/app", f"r{n}")
    pulled = tmp_path / f"pulled-{n}"
    began = time.monotonic()
    skopeo.copy(image.reference, reference, "--dest-creds", alice)
    skopeo.copy(reference, f"dir:{pulled}", "--src-creds", alice)
    took = time.monotonic() - began
    assert dir_files(pulled) == expected_dir_files(image)
    return took


@pytest.mark.interop
@pytest.mark.slow
def test_a_noisy_neighbour_at_twenty_times_its_limit_does_not_slow_another(
    make_server, tmp_path
):
    # bob may read 10 requests a second (burst 20) and sends 200 a second.
    server = make_server({
        "auth": {"mode": "token"},
        "rate_limits": {"overrides": [{"subjects": ["user:bob"], "class": "read",
                                       "per_minute": 600, "burst": 20}]},
    })  # fmt: skip
    add_user(server, "alice")
    add_user(server, "bob")
    skopeo = Skopeo(tmp_path / "skopeo")
    image = build_image(tmp_path / "image")
    idle = [skopeo_round(skopeo, server, image, tmp_path, n) for n in range(3)]

    bob = bearer(server, ("bob", PASSWORD["bob"]), "bob/app")
    (worker,) = server.worker_pids()
    baseline = rss_kib(worker)
    stop = threading.Event()
    seen = {"statuses": {}, "peak_rss": baseline, "sent": 0}

    def noise() -> None:
        # 200 requests a second, paced, from one keep-alive connection.
        with httpx.Client(base_url=server.url, headers=bob, timeout=30) as client:
            next_at = time.monotonic()
            while not stop.is_set():
                status = client.get("/v2/").status_code
                seen["statuses"][status] = seen["statuses"].get(status, 0) + 1
                seen["sent"] += 1
                next_at += 1 / 200
                time.sleep(max(0.0, next_at - time.monotonic()))

    def watch() -> None:
        while not stop.is_set():
            seen["peak_rss"] = max(seen["peak_rss"], rss_kib(worker))
            time.sleep(0.2)

    threads = [threading.Thread(target=noise), threading.Thread(target=watch)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    busy = []
    try:
        n = 3
        while time.monotonic() - began < NOISE_SECONDS:
            busy.append(skopeo_round(skopeo, server, image, tmp_path, n))
            n += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    elapsed = time.monotonic() - began
    statuses = seen["statuses"]
    print(f"noise: {seen['sent']} requests in {elapsed:.1f} s {statuses}; skopeo "
          f"idle {statistics.median(idle):.2f} s, busy {statistics.median(busy):.2f} s "
          f"over {len(busy)} rounds; worker RSS {baseline // 1024} -> "
          f"{seen['peak_rss'] // 1024} MiB")  # fmt: skip
    # The neighbour sent about twenty times its rate and was refused the rest.
    assert seen["sent"] / elapsed > 15 * 10
    assert set(statuses) == {200, 429}, statuses
    assert statuses[200] <= 20 + 10 * elapsed * 1.1
    # The other user saw no error (skopeo_round checks) and no slowdown.
    assert statistics.median(busy) <= 2 * statistics.median(idle)
    assert seen["peak_rss"] - baseline < 64 * 1024


@pytest.mark.slow
def test_five_hundred_byte_at_a_time_clients_do_not_stop_a_pull(make_server):
    server = make_server({"auth": {"mode": "none"},
                          "server": {"header_read_timeout_seconds": 10}})  # fmt: skip
    repo = unique_repo("slowloris")
    data = b"p" * (256 * 1024)
    with server.client() as client:
        digest = push_blob(client, repo, data)
    host, port = server.host.rsplit(":", 1)
    head = f"GET /v2/{repo}/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    selector = selectors.DefaultSelector()
    slow = []
    for _ in range(500):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.setblocking(False)
        slow.append(sock)
    stop = threading.Event()

    def dribble() -> None:
        # One byte per connection every half second, for at most 8 s.
        sent = 0
        while not stop.is_set() and sent < 16 and sent < len(head):
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(head[sent : sent + 1])
            sent += 1
            stop.wait(0.5)

    thread = threading.Thread(target=dribble)
    thread.start()
    took = []
    try:
        time.sleep(1)  # every slow connection is open and talking
        for _ in range(20):
            began = time.monotonic()
            with httpx.Client(base_url=server.url, timeout=10) as client:
                response = client.get(f"/v2/{repo}/blobs/{digest}")
            took.append(time.monotonic() - began)
            assert response.status_code == 200
            assert sha256(response.content) == digest
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
        for sock in slow:
            sock.close()
        selector.close()
    print(f"pulls under 500 slow clients: median {statistics.median(took) * 1000:.1f} "
          f"ms, worst {max(took) * 1000:.1f} ms")  # fmt: skip
    assert max(took) < 2.0


def held_body(body: bytes, release: threading.Event):
    """`body`'s first byte, the rest once `release` is set (10 s at most)."""
    yield body[:1]
    release.wait(10)
    yield body[1:]


def test_requests_in_flight_are_limited_per_address(make_server):
    server = make_server({
        "auth": {"mode": "none"},
        "server": {"max_requests_in_flight_per_address": 3, "body_timeout_seconds": 10},
    })  # fmt: skip
    repo = unique_repo("inflight")
    with server.client() as client:
        sessions = [
            client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
            for _ in range(3)
        ]
    release = threading.Event()

    def hold(location: str) -> None:
        with server.client() as client, contextlib.suppress(httpx.HTTPError):
            client.patch(location, content=held_body(b"ab", release))

    holders = [threading.Thread(target=hold, args=(s,)) for s in sessions]
    for thread in holders:
        thread.start()
    try:
        time.sleep(1)  # three requests in flight from this address
        with server.client() as client:
            refused = client.get("/v2/")
            assert refused.status_code == 429, refused.text
            assert "server.max_requests_in_flight_per_address" in refused.text
            assert refused.headers["retry-after"] == "1"
            # Health checks are not requests of a client.
            assert client.get("/healthz").status_code == 200
    finally:
        release.set()
        for thread in holders:
            thread.join(30)
    with server.client() as client:
        assert client.get("/v2/").status_code == 200  # the slots are back


def test_a_worker_that_dies_is_started_again(make_server):
    import os
    import signal

    server = make_server({"auth": {"mode": "none"}, "server": {"workers": 2}})
    first = server.worker_pids()
    assert len(first) == 2
    os.kill(first[0], signal.SIGKILL)  # a worker of the server this test started
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = server.worker_pids()
        if len(now) == 2 and first[0] not in now:
            break
        time.sleep(0.5)
    assert len(server.worker_pids()) == 2 and first[0] not in server.worker_pids()
    for _ in range(10):  # on fresh connections, so both workers answer
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/v2/").status_code == 200


def test_a_busy_worker_shares_what_is_left_among_clients(make_server):
    # Clients behind a trusted proxy (this test), so that two addresses can
    # come from one machine.
    server = make_server({
        "auth": {"mode": "none"},
        "server": {"trusted_proxies": ["127.0.0.1/32"], "max_requests_in_flight": 16,
                   "max_requests_in_flight_per_address": 16, "body_timeout_seconds": 10},
    })  # fmt: skip
    release = threading.Event()
    greedy = {"x-forwarded-for": "198.51.100.1"}

    def hold(i: int) -> None:
        with server.client() as client, contextlib.suppress(httpx.HTTPError):
            answer = client.put(
                f"/v2/greedy/app/manifests/t{i}", content=held_body(b"{}", release),
                headers={**greedy, "content-length": "2",
                         "content-type": "application/vnd.oci.image.manifest.v1+json"},
            )  # fmt: skip
            # Eight wait for the body; four were refused, which the client
            # reads once it has sent its body.
            assert answer.status_code in (400, 408, 429)

    holders = [threading.Thread(target=hold, args=(i,)) for i in range(12)]
    for thread in holders:
        thread.start()
    try:
        time.sleep(2)
        with server.client() as client:
            # Half of 16 in flight: the greedy address got no more than its
            # share, 8 (and the scrape is the ninth)...
            metrics = client.get("/metrics").text.splitlines()
            assert "quaylock_http_requests_in_flight 9" in metrics
            # ... and its next request is refused, saying why.
            again = client.get("/v2/", headers=greedy)
            assert again.status_code == 429
            assert "the server is busy" in again.text
            assert "server.max_requests_in_flight" in again.text
            # Another client still gets in.
            other = client.get("/v2/", headers={"x-forwarded-for": "203.0.113.9"})
            assert other.status_code == 200, other.text
    finally:
        release.set()
        for thread in holders:
            thread.join(30)
