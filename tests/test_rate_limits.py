"""Rate limits on a running server: per client address without
credentials, per subject with them, by class of request, with overrides,
across worker processes and through Redis; forwarding headers buy nothing
from a client that is no trusted proxy."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.helpers import error_code, push_image, unique_repo
from tests.test_auth_clients import PASSWORD, add_user
from tests.test_upload_sessions import bearer

# Five at once, then one a second: a test's requests outrun the refill.
TIGHT = {"per_minute": 60, "burst": 5}


def limits(**classes) -> dict:
    return {"rate_limits": {"read": TIGHT, **classes}, "auth": {"mode": "none"}}


def statuses(client, path: str, count: int, **kwargs) -> list[int]:
    return [client.get(path, **kwargs).status_code for _ in range(count)]


def test_a_client_past_its_burst_gets_429_with_the_headers(make_server):
    server = make_server(limits())
    with server.client() as client:
        first = client.get("/v2/")
        assert first.headers["ratelimit-limit"] == "5"
        assert first.headers["ratelimit-remaining"] == "4"
        assert statuses(client, "/v2/", 4) == [200] * 4
        refused = client.get("/v2/")
    assert refused.status_code == 429
    assert error_code(refused) == "TOOMANYREQUESTS"
    assert 1 <= int(refused.headers["retry-after"]) <= 2
    assert refused.headers["ratelimit-remaining"] == "0"
    message = refused.json()["errors"][0]["message"]
    assert "client 127.0.0.1 is over the rate limit for read requests" in message
    assert "60 a minute, 5 at once (rate_limits.read)" in message


def test_a_new_forwarded_address_on_every_request_is_still_one_client(make_server):
    server = make_server(limits())
    with server.client() as client:
        seen = [
            client.get(
                "/v2/",
                headers={
                    "x-forwarded-for": f"198.51.100.{i}",
                    "forwarded": f"for=203.0.113.{i}",
                },
            ).status_code  # fmt: skip
            for i in range(12)
        ]
    assert seen == [200] * 5 + [429] * 7


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit(make_server):
    server = make_server({**limits(), "server": {"trusted_proxies": ["127.0.0.1/32"]}})
    with server.client() as client:
        for i in range(3):
            forwarded = {"x-forwarded-for": f"198.51.100.{i}"}
            assert statuses(client, "/v2/", 6, headers=forwarded) == [200] * 5 + [429]


def test_writes_and_reads_are_counted_apart(make_server):
    server = make_server(limits(write={"per_minute": 60, "burst": 2}))
    repo = unique_repo("rates")
    with server.client() as client:
        assert [client.post(f"/v2/{repo}/blobs/uploads/").status_code
                for _ in range(3)] == [202, 202, 429]  # fmt: skip
        assert client.get("/v2/").status_code == 200  # reads have their own


def test_listings_cost_by_the_page_size_asked_for(make_server):
    server = make_server(
        {
            **limits(listing={"per_minute": 60, "burst": 10}),
            "rate_limits": {
                "read": {"per_minute": 0},
                "listing": {"per_minute": 60, "burst": 10},
                "listing_entries_per_request": 100,
            },
        }  # fmt: skip
    )
    repo = unique_repo("pages")
    with server.client() as client:
        push_image(client, repo)
        # A page of 1000 costs ten requests: the whole burst.
        assert (
            client.get(f"/v2/{repo}/tags/list", params={"n": 1000}).status_code == 200
        )
        refused = client.get(f"/v2/{repo}/tags/list", params={"n": 1})
        assert refused.status_code == 429
        assert "listing requests" in refused.text
        assert client.get(f"/v2/{repo}/manifests/v1").status_code == 200  # a read


def test_each_user_has_a_bucket_and_an_override_lifts_one(make_server):
    server = make_server({
        "auth": {"mode": "token"},
        "rate_limits": {"read": TIGHT, "token": {"per_minute": 0},
                        "overrides": [{"subjects": ["user:bob"], "class": "read",
                                       "per_minute": 6000, "burst": 100}]},
    })  # fmt: skip
    for name in ("alice", "bob"):
        add_user(server, name)
    alice = bearer(server, ("alice", PASSWORD["alice"]), "alice/app")
    bob = bearer(server, ("bob", PASSWORD["bob"]), "bob/app")
    with server.client() as client:
        assert statuses(client, "/v2/", 6, headers=alice) == [200] * 5 + [429]
        refused = client.get("/v2/", headers=alice)
        assert "alice is over the rate limit" in refused.text
        # Another user from the same address is not held up by alice.
        assert statuses(client, "/v2/", 20, headers=bob) == [200] * 20


def test_logins_count_per_address_before_the_password_is_checked(make_server):
    server = make_server({"auth": {"mode": "token"},
                          "rate_limits": {"token": {"per_minute": 60, "burst": 3}}})  # fmt: skip
    add_user(server, "alice")
    with server.client() as client:
        assert wrong_logins(client, "alice", 5) == [401, 401, 401, 429, 429]


def wrong_logins(client, name: str, count: int) -> list[int]:
    """The answers to `count` logins as `name` with wrong passwords."""
    return [
        client.get("/v2/token", params={"service": "quaylock"},
                   auth=(name, f"guess-{i}")).status_code
        for i in range(count)
    ]  # fmt: skip


def _count_allowed(server, count: int) -> int:
    """Requests on fresh connections, so that several workers share them."""
    host, port = server.host.rsplit(":", 1)
    allowed = 0
    for _ in range(count):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head = sock.recv(4096)
        allowed += head.startswith(b"HTTP/1.1 200")
    return allowed


def test_limits_hold_across_worker_processes(make_server):
    server = make_server({**limits(read={"per_minute": 60, "burst": 10}),
                          "server": {"workers": 2}})  # fmt: skip
    # 40 requests in well under a second: ten, and at most one refill.
    assert 10 <= _count_allowed(server, 40) <= 11


def test_limits_hold_through_redis_across_servers(make_server, redis_url):
    # Two servers (two replicas) sharing one Redis, with a key space of
    # this test's own: together they allow one burst.
    settings = {
        **limits(read={"per_minute": 60, "burst": 10}),
        "rate_limits": {"backend": "redis", "redis_url": redis_url,
                        "read": {"per_minute": 60, "burst": 10}},
    }  # fmt: skip
    first, second = make_server(settings), make_server(settings)
    allowed = _count_allowed(first, 15) + _count_allowed(second, 15)
    assert 10 <= allowed <= 11


@pytest.fixture
def redis_url():
    """The Redis on 127.0.0.1:6379 (.ci/run starts it), on a database no
    other test uses, emptied before and after."""
    redis = pytest.importorskip("redis")
    url = "redis://127.0.0.1:6379/7"
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("no Redis on 127.0.0.1:6379: .ci/run starts one")
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def test_a_refused_login_challenge_still_says_what_is_left(make_server):
    server = make_server({"auth": {"mode": "token"}})
    with server.client() as client:
        challenged = client.get("/v2/")
    assert challenged.status_code == 401
    assert challenged.headers["ratelimit-limit"] == "1000"
    assert int(challenged.headers["ratelimit-remaining"]) == 999


def test_an_override_that_lifts_a_limit_needs_no_burst(make_server):
    server = make_server({
        **limits(),
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "rate_limits": {"read": TIGHT, "overrides": [
            {"addresses": ["10.20.0.0/16"], "per_minute": 0}]},
    })  # fmt: skip
    office = {"x-forwarded-for": "10.20.9.9"}
    with server.client() as client:
        assert statuses(client, "/v2/", 20, headers=office) == [200] * 20


def test_parallel_logins_with_the_right_password_lock_nobody_out(make_server):
    import concurrent.futures
    import threading

    server = make_server({"auth": {"mode": "token", "lockout_failures": 5}})
    add_user(server, "alice")
    start = threading.Barrier(16, timeout=30)

    def login(_: int) -> int:
        with server.client() as client:
            start.wait()
            return client.get(
                "/v2/token", params={"service": "quaylock"},
                auth=("alice", PASSWORD["alice"]),
            ).status_code  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert list(pool.map(login, range(16), timeout=120)) == [200] * 16
    with server.client() as client:
        after = client.get("/v2/token", params={"service": "quaylock"},
                           auth=("alice", PASSWORD["alice"]))  # fmt: skip
        assert after.status_code == 200, after.text


def test_the_first_challenge_of_a_pull_is_not_a_refusal(make_server):
    server = make_server({"auth": {"mode": "token"}})
    with server.client() as client:
        assert client.get("/v2/").status_code == 401
        assert client.get("/v2/", auth=("nobody", "wrong-password")).status_code == 401
        metrics = client.get("/metrics").text
    assert 'quaylock_refusals_total{reason="auth"} 1' in metrics


def test_refusals_count_too_whoever_sends_them(make_server):
    # A subject refused the repository (403), and requests for no route at
    # all (404), cost like any other request: floods of them are limited.
    server = make_server({
        "auth": {"mode": "token"},
        "rate_limits": {"read": TIGHT},
    })  # fmt: skip
    add_user(server, "alice")
    add_user(server, "bob")
    bob = bearer(server, ("bob", PASSWORD["bob"]), "alice/app")
    with server.client() as client:
        refused = statuses(client, "/v2/alice/app/manifests/latest", 7, headers=bob)
        assert refused == [403] * 5 + [429] * 2
    other = make_server(limits())
    with other.client() as client:
        assert statuses(client, "/nowhere", 7) == [404] * 5 + [429] * 2


def test_a_page_size_written_with_leading_zeros_costs_the_same(make_server):
    server = make_server({"auth": {"mode": "none"}, "rate_limits": {
        "read": {"per_minute": 0}, "listing": {"per_minute": 60, "burst": 10}}})  # fmt: skip
    repo = unique_repo("zeros")
    with server.client() as client:
        push_image(client, repo)
        first = client.get(f"/v2/{repo}/tags/list", params={"n": "0000000001000"})
        assert first.status_code == 200
        assert client.get(f"/v2/{repo}/tags/list", params={"n": 1}).status_code == 429


def test_an_unreachable_redis_leaves_each_server_its_own_limits(make_server):
    # Nothing listens on port 9 of loopback (discard is not served here).
    server = make_server({**limits(), "rate_limits": {
        "backend": "redis", "redis_url": "redis://127.0.0.1:9/0", "read": TIGHT}})  # fmt: skip
    with server.client() as client:
        assert statuses(client, "/v2/", 7) == [200] * 5 + [429] * 2
    assert "redis unreachable" in server.log()


def _guesses(server, count: int) -> list[int]:
    """Wrong passwords for alice at the token endpoint, each on a fresh
    connection, so that several workers share them."""
    host, port = server.host.rsplit(":", 1)
    answers = []
    for i in range(count):
        with httpx.Client(base_url=f"http://{host}:{port}") as client:
            answers.append(
                client.get(
                    "/v2/token", params={"service": "quaylock"},
                    auth=("alice", f"guess-{i}"), headers={"Connection": "close"},
                ).status_code
            )  # fmt: skip
    return answers


# Logins locked after five failures; rate limits off, so that only the
# lockout answers 429.
LOCKOUT = {
    "auth": {"mode": "token", "lockout_failures": 5, "lockout_seconds": 600},
    "rate_limits": {"enabled": False},
}


def test_a_login_lockout_holds_across_worker_processes(make_server):
    server = make_server({**LOCKOUT, "server": {"workers": 2}})
    add_user(server, "alice")
    assert _guesses(server, 12) == [401] * 5 + [429] * 7


def test_a_login_lockout_holds_through_redis_across_servers(make_server, redis_url):
    settings = {**LOCKOUT, "rate_limits": {"enabled": False, "backend": "redis",
                                           "redis_url": redis_url}}  # fmt: skip
    first, second = make_server(settings), make_server(settings)
    add_user(first, "alice")
    add_user(second, "alice")
    answers = _guesses(first, 3) + _guesses(second, 3) + _guesses(first, 2)
    assert answers == [401] * 5 + [429] * 3


def test_passwords_sent_to_metrics_or_the_admin_api_count_as_logins(make_server):
    server = make_server({
        "auth": {"mode": "token"},
        "metrics": {"allow": ["10.99.0.0/16"]},  # not this test's loopback
        "rate_limits": {"token": {"per_minute": 60, "burst": 3}},
    })  # fmt: skip
    add_user(server, "alice")  # no admin: each check costs a password hash
    mallory = ("alice", PASSWORD["alice"])
    for path in ("/metrics", "/admin/v1/users"):
        with server.client() as client:
            answers = [client.get(path, auth=mallory) for _ in range(5)]
        assert [a.status_code for a in answers] == [403, 403, 403, 429, 429], path
        assert "rate_limits.token" in answers[-1].text
        time.sleep(3.5)  # the bucket refills for the next path


def test_an_override_for_anonymous_leaves_logins_limited(make_server):
    server = make_server({
        "auth": {"mode": "token"},
        "rate_limits": {
            "token": {"per_minute": 60, "burst": 3},
            "overrides": [{"subjects": ["anonymous"], "per_minute": 0}],
        },
    })  # fmt: skip
    with server.client() as client:
        # Requests without credentials are no longer limited...
        assert statuses(client, "/v2/", 10) == [401] * 10
        # ... but logins still count per address.
        assert wrong_logins(client, "nobody", 5) == [401, 401, 401, 429, 429]
