"""Webhooks: signed events for tag moves and refusals, retried, never
blocking the push that caused them. The receiver is a real HTTP server on
loopback started by the test."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time

import pytest

from tests.conftest import free_port
from tests.helpers import push_image, push_manifest, unique_repo

SECRET = b"webhook-secret-123"


class Receiver:
    """Records POSTs; fails the first `failures` of them with 500, and
    answers each after `delay` seconds."""

    def __init__(self, failures: int = 0, delay: float = 0.0):
        self.events: list[tuple[dict, bytes]] = []
        self.attempts = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.attempts += 1
                time.sleep(delay)
                if receiver.attempts <= failures:
                    self.send_response(500)
                else:
                    receiver.events.append((dict(self.headers), body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", free_port()), Handler
        )
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver_factory():
    made = []

    def make(**kwargs) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def start(make_server, tmp_path, url: str):
    secret = tmp_path / "hook.secret"
    secret.write_bytes(SECRET)
    return make_server({"webhooks": [{"url": url, "secret_file": str(secret)}]})


def test_tag_moves_and_refusals_are_sent_signed(
    make_server, tmp_path, receiver_factory
):
    receiver = receiver_factory()
    server = start(make_server, tmp_path, receiver.url)
    with server.client() as client:
        repo = unique_repo("hooks")
        first = push_image(client, repo, tag="1.0", seed="a")
        second = push_image(client, repo, tag="1.0", seed="b")
        push_manifest(client, repo, "latest", first["manifest"])
        bad = push_manifest(client, repo, "latset", first["manifest"])
        assert bad.status_code == 403
    receiver.wait_for(4, 10)
    actions = []
    for headers, body in receiver.events:
        expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        assert headers["X-Quaylock-Signature"] == expected
        event = json.loads(body)
        assert headers["X-Quaylock-Event"] == event["action"]
        actions.append((event["action"], event["tag"]))
    assert ("tag.create", "1.0") in actions
    assert ("tag.move", "1.0") in actions
    assert ("refused", "latset") in actions
    move = next(json.loads(b) for _, b in receiver.events if b"tag.move" in b)
    assert move["old_digest"] == first["digest"]
    assert move["new_digest"] == second["digest"]


def test_failed_deliveries_are_retried(make_server, tmp_path, receiver_factory):
    receiver = receiver_factory(failures=2)
    server = start(make_server, tmp_path, receiver.url)
    with server.client() as client:
        push_image(client, unique_repo("hooks"), tag="v1")
    receiver.wait_for(1, 15)
    assert len(receiver.events) == 1
    assert receiver.attempts == 3
    delivery_ids = {h["X-Quaylock-Delivery"] for h, _ in receiver.events}
    assert len(delivery_ids) == 1


def test_a_slow_receiver_never_slows_a_push(make_server, tmp_path, receiver_factory):
    receiver = receiver_factory(delay=3.0)
    server = start(make_server, tmp_path, receiver.url)
    with server.client() as client:
        started = time.monotonic()
        for i in range(5):
            push_image(client, unique_repo("hooks"), tag="v1", seed=str(i))
        elapsed = time.monotonic() - started
    assert elapsed < 2.5, f"five pushes took {elapsed:.1f} s behind a 3 s webhook"
    receiver.wait_for(5, 20)
    assert len(receiver.events) == 5
