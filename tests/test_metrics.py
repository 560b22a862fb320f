"""``GET /metrics``: audit and signature counters, summed over workers, and
the gauge of held names, from a running server."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import push_image, push_manifest, unique_repo
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
    assert not any(k.startswith("quaylock_signature_checks_total{") for k in before)

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
    scrapes = [
        {k: v for k, v in scrape(server).items() if "_total" in k} for _ in range(6)
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
