"""``GET /metrics``: audit and signature counters, summed over workers, the
gauge of held names, requests by route template, latency and refusals by
reason, from a running server; and who may read it."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import push_blob, push_image, push_manifest, unique_repo
from tests.test_signature_policy import sign
from tests.test_signatures import write_public_key


def scrape(server) -> dict[str, float]:
    """One scrape over a fresh connection (so it may land on any worker),
    as {'name{labels}': value}."""
    with server.client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples


def test_metrics_count_signature_checks_and_audit_events_across_workers(
    make_server, tmp_path
):
    signer = ec.generate_private_key(ec.SECP256R1())
    key = write_public_key(tmp_path / "signer.pub", signer)
    server = make_server({
        "server": {"workers": 2},
        "signatures": {"policies": [
            {"repositories": ["signed/**"], "mode": "tag", "tags": ["latest"],
             "cosign_keys": [str(key)]},
            {"repositories": ["watched/**"], "mode": "audit", "tags": ["latest"],
             "cosign_keys": [str(key)]},
        ]},
    })  # fmt: skip
    before = scrape(server)
    assert before["quaylock_holds_pending"] == 0
    # Every series is there from the start, at zero.
    checks = [k for k in before if k.startswith("quaylock_signature_checks_total{")]
    assert len(checks) == 9 and not any(before[k] for k in checks)

    signed, watched = unique_repo("signed/app"), unique_repo("watched/app")
    for attempt in range(3):
        with server.client() as client:  # new connection: either worker
            image = push_image(client, signed, tag=None, seed=f"unsigned {attempt}")
            refused = push_manifest(client, signed, "latest", image["manifest"])
            assert refused.status_code == 403
    with server.client() as client:
        image = push_image(client, signed, tag=None, seed="signed")
        sign(client, signed, image["digest"], signer)
        assert (
            push_manifest(client, signed, "latest", image["manifest"]).status_code
            == 201
        )
        unsigned = push_image(client, watched, tag=None, seed="watched")
        moved = push_manifest(client, watched, "latest", unsigned["manifest"])
        assert moved.status_code == 201  # audit mode refuses nothing

    # Counters only: the free-disk gauge moves with everything else here.
    # (Request series move with every scrape: they count the scrapes too.)
    scrapes = [
        {
            k: v
            for k, v in scrape(server).items()
            if "_total" in k and not k.startswith("quaylock_http_")
        }
        for _ in range(6)
    ]
    assert all(s == scrapes[0] for s in scrapes), f"workers disagree: {scrapes}"
    after = scrapes[0]
    checks = "quaylock_signature_checks_total"
    assert after[f'{checks}{{mode="tag",result="unsigned"}}'] == 3
    assert after[f'{checks}{{mode="tag",result="verified"}}'] == 1
    assert after[f'{checks}{{mode="audit",result="unsigned"}}'] == 1
    events = "quaylock_audit_events_total"
    assert after[f'{events}{{action="refused"}}'] == 3
    # latest in both repositories, and the .sig tag of the signature
    assert after[f'{events}{{action="tag.create"}}'] == 3


def test_metrics_show_pending_holds(make_server):
    server = make_server({"tags": {"rules": [
        {"repositories": ["**"], "protected": ["latest"], "lookalike": "hold"},
    ]}})  # fmt: skip
    repository = unique_repo("held")
    with server.client() as client:
        image = push_image(client, repository, tag="latest", seed="base")
        held = push_manifest(client, repository, "1atest", image["manifest"])
        assert held.status_code == 403
    assert scrape(server)["quaylock_holds_pending"] == 1


def test_totals_never_go_backwards_while_two_workers_count(make_server):
    import threading

    server = make_server({"server": {"workers": 2}})
    repository = unique_repo("counted")
    done = threading.Event()

    def push_many() -> None:
        with server.client() as client:
            for i in range(60):
                push_image(client, repository, tag=f"t{i}", seed=str(i))
        done.set()

    pusher = threading.Thread(target=push_many)
    pusher.start()
    seen = []
    while not done.is_set() and len(seen) < 2000:
        seen.append(
            scrape(server).get('quaylock_audit_events_total{action="tag.create"}', 0)
        )
    pusher.join(120)
    seen.append(scrape(server)['quaylock_audit_events_total{action="tag.create"}'])
    assert seen == sorted(seen), "a scrape saw fewer than an earlier one"
    assert seen[-1] == 60


def test_health_and_readiness(make_server):
    server = make_server()
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ready"
        assert (body["metadata"], body["blob_store"], body["uploads"]) == (
            "ok", "ok", "accepted"
        )  # fmt: skip
        assert body["disk_free_bytes"] > 0


def test_requests_are_counted_by_route_template_with_latency_and_refusals(
    make_server,
):
    server = make_server({
        "auth": {"mode": "none"},
        "server": {"workers": 2},
        "rate_limits": {"write": {"per_minute": 60, "burst": 3}},
    })  # fmt: skip
    repo = unique_repo("counted")
    with server.client() as client:
        push_blob(client, repo, b"counted")  # two writes: POST, PUT
        posts = [
            client.post(f"/v2/{repo}/blobs/uploads/").status_code for _ in range(3)
        ]
        assert posts.count(429) >= 1
        assert client.get(f"/v2/{repo}/manifests/v1").status_code == 404
        assert client.get("/nowhere").status_code == 404
    samples = scrape(server)

    def requests(route: str, method: str, code: int) -> float:
        labels = f'route="{route}",method="{method}",code="{code}"'
        return samples.get(f"quaylock_http_requests_total{{{labels}}}", 0)

    manifests = "/v2/{name}/manifests/{reference}"
    assert requests(manifests, "GET", 404) == 1
    assert requests("/v2/{name}/blobs/uploads/", "POST", 429) == posts.count(429)
    assert requests("unmatched", "GET", 404) == 1
    assert samples['quaylock_refusals_total{reason="rate_limit"}'] == posts.count(429)
    latency = "quaylock_http_request_duration_seconds"
    where = f'route="{manifests}"'
    assert samples[f"{latency}_count{{{where}}}"] == 1
    assert samples[f'{latency}_bucket{{{where},le="+Inf"}}'] == 1
    assert 0 < samples[f"{latency}_sum{{{where}}}"] < 5
    uploads = 'route="/v2/{name}/blobs/uploads/{upload_id}"'
    assert samples[f"quaylock_http_request_bytes_total{{{uploads}}}"] == len(b"counted")
    # The scrape counts itself: /metrics is held to the in-flight limits.
    assert samples["quaylock_http_requests_in_flight"] == 1
    # push_blob finished its session; the POSTs that got 202 left theirs open.
    assert samples["quaylock_uploads_open"] == posts.count(202)


def test_metrics_are_for_allowed_addresses_and_admins(make_server):
    server = make_server({
        "auth": {"mode": "token"},
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "metrics": {"allow": ["127.0.0.1/32", "10.0.0.0/8"]},
    })  # fmt: skip
    outside = {"x-forwarded-for": "198.51.100.7"}
    with server.client() as client:
        assert (
            client.get("/metrics", headers={"x-forwarded-for": "10.1.2.3"}).status_code
            == 200
        )
        refused = client.get("/metrics", headers=outside)
        assert refused.status_code == 401
        admin = ("admin", (server.data / "admin-password").read_text().strip())
        assert client.get("/metrics", headers=outside, auth=admin).status_code == 200
        # Health and readiness stay open: load balancers probe them.
        assert client.get("/healthz", headers=outside).status_code == 200


def test_without_authentication_only_allowed_addresses_read_metrics(make_server):
    server = make_server({"server": {"trusted_proxies": ["127.0.0.1/32"]}})
    with server.client() as client:
        refused = client.get("/metrics", headers={"x-forwarded-for": "198.51.100.7"})
        assert refused.status_code == 403
        assert "198.51.100.7 is not in metrics.allow" in refused.text
        assert client.get("/metrics").status_code == 200  # loopback, by default


def test_a_dead_workers_counts_stay_but_its_requests_leave_the_gauge(tmp_path):
    import subprocess
    import sys

    from quaylock.metrics import Metrics

    routes = ("/v2/", "unmatched")
    # A worker that counts a refusal and dies with a request in flight.
    subprocess.run([sys.executable, "-c", (
        "import os, sys; from pathlib import Path; from quaylock.metrics import Metrics\n"
        f"m = Metrics(Path({str(tmp_path)!r}), {routes!r})\n"
        "m.inc('quaylock_refusals_total', reason='rate_limit')\n"
        "m.in_flight(1)\n"
        "os._exit(9)\n"
    )], check=False, timeout=30)  # fmt: skip
    alive = Metrics(tmp_path, routes)
    alive.in_flight(1)
    text = alive.render({}).decode()
    assert 'quaylock_refusals_total{reason="rate_limit"} 1' in text
    assert 'quaylock_refusals_total{reason="quota"} 0' in text
    assert "quaylock_http_requests_in_flight 1" in text.splitlines()


def test_health_checks_answer_head_too(server):
    with server.client() as client:
        for path in ("/healthz", "/readyz"):
            answer = client.head(path)
            assert answer.status_code == 200, path
            assert answer.content == b""
