"""Tag rules, the look-alike guard on tags, the audit log, history and
rollback, against real servers."""

from __future__ import annotations

import concurrent.futures
import json
import sqlite3
import subprocess
import sys

import httpx
import pytest

from tests.helpers import error_code, image_manifest, push_blob, push_manifest, sha256

ADMIN = ("admin", "admin-pass-123")
DEV = ("dev", "dev-pass-1234")

RULES = {
    "auth": {
        "mode": "token",
        "rules": [{"subjects": ["group:devs"], "repositories": ["team/**"],
                   "actions": ["pull", "push", "delete"]}],
    },
    "tags": {
        "rules": [
            {"repositories": ["**"], "protected": ["latest", "stable"]},
            {
                "repositories": ["team/**"],
                "allow": [r"v?[0-9]+\.[0-9]+\.[0-9]+", "latest", "stable", "dev-.*"],
                "immutable": [r"v?[0-9]+\.[0-9]+\.[0-9]+"],
            },
        ]
    },
}  # fmt: skip


def cli(server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quaylock.cli.main", *args[:1], "--data", str(server.data),
         "--config", str(server.data.parent / "config.yaml"), *args[1:]],
        input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


class Pusher:
    """A client with a token for one repository."""

    def __init__(self, server, credentials, repository):
        self.client = server.client()
        self.repository = repository
        token = self.client.get(
            "/v2/token",
            params={
                "service": "quaylock",
                "scope": f"repository:{repository}:pull,push,delete",
            },
            auth=credentials,
        ).json()["token"]
        self.client.headers["authorization"] = f"Bearer {token}"

    def image(self, seed: str) -> bytes:
        config = json.dumps({"os": "linux", "seed": seed}).encode()
        layer = f"layer {seed}".encode()
        push_blob(self.client, self.repository, config)
        push_blob(self.client, self.repository, layer)
        return image_manifest(config, [layer])

    def push(self, reference: str, manifest: bytes) -> httpx.Response:
        return push_manifest(self.client, self.repository, reference, manifest)

    def delete(self, reference: str) -> httpx.Response:
        return self.client.delete(f"/v2/{self.repository}/manifests/{reference}")


@pytest.fixture
def registry(make_server):
    server = make_server(RULES, env={"QUAYLOCK_ADMIN_PASSWORD": ADMIN[1]})
    result = cli(server, "user", "add", DEV[0], "--group", "devs", "--password-stdin",
                 stdin=DEV[1] + "\n")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return server


def test_protected_tag_needs_the_tag_admin_right(registry):
    dev = Pusher(registry, DEV, "team/app")
    manifest = dev.image("one")
    assert dev.push(sha256(manifest), manifest).status_code == 201
    refused = dev.push("latest", manifest)
    assert refused.status_code == 403
    assert error_code(refused) == "DENIED"
    message = refused.json()["errors"][0]["message"]
    assert (
        "protected" in message and "tags.rules[0]" in message and "tag-admin" in message
    )
    admin = Pusher(registry, ADMIN, "team/app")
    assert admin.push("latest", manifest).status_code == 201
    assert dev.delete("latest").status_code == 403
    assert admin.client.get("/v2/team/app/manifests/latest").status_code == 200


def test_immutable_tag_cannot_move_or_go_but_repush_is_a_no_op(registry):
    dev = Pusher(registry, DEV, "team/app")
    first, second = dev.image("one"), dev.image("two")
    assert dev.push("1.0.0", first).status_code == 201
    assert dev.push("1.0.0", first).status_code == 201  # same digest: no-op
    moved = dev.push("1.0.0", second)
    assert moved.status_code == 403
    assert "immutable" in moved.json()["errors"][0]["message"]
    assert dev.delete("1.0.0").status_code == 403
    assert dev.delete(sha256(first)).status_code == 403
    admin = Pusher(registry, ADMIN, "team/app")
    assert admin.push("1.0.0", second).status_code == 403  # nobody, admins included
    got = dev.client.get("/v2/team/app/manifests/1.0.0")
    assert got.headers["docker-content-digest"] == sha256(first)


def test_naming_rule_refuses_other_tags(registry):
    dev = Pusher(registry, DEV, "team/app")
    manifest = dev.image("x")
    refused = dev.push("nightly", manifest)
    assert refused.status_code == 403
    assert "must match one of" in refused.json()["errors"][0]["message"]
    assert dev.push("dev-123", manifest).status_code == 201


def test_twenty_racing_pushes_to_one_immutable_tag_leave_one_winner(registry):
    dev = Pusher(registry, DEV, "team/race")
    manifests = [dev.image(f"racer-{i}") for i in range(20)]
    token_header = dev.client.headers["authorization"]

    def push(manifest: bytes) -> int:
        with registry.client() as c:
            c.headers["authorization"] = token_header
            return push_manifest(c, "team/race", "2.0.0", manifest).status_code

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(push, manifests, timeout=120))
    assert sorted(statuses) == [201] + [403] * 19
    winner = manifests[statuses.index(201)]
    got = dev.client.get("/v2/team/race/manifests/2.0.0")
    assert got.headers["docker-content-digest"] == sha256(winner)


def test_lookalike_of_a_protected_tag_is_refused_and_honest_versions_pass(registry):
    admin = Pusher(registry, ADMIN, "admin/app")
    manifest = admin.image("base")
    assert admin.push("latest", manifest).status_code == 201
    assert admin.push("1.2.3", manifest).status_code == 201
    spoof = admin.push("lastest", manifest)
    assert spoof.status_code == 403
    assert "looks like 'latest'" in spoof.json()["errors"][0]["message"]
    assert admin.push("1.2.4", manifest).status_code == 201
    assert admin.push("v1.2.3", manifest).status_code == 403


def audit_rows(server) -> list[tuple]:
    db = sqlite3.connect(server.data / "metadata.db")
    try:
        return db.execute("SELECT seq, action, subject, tag, old_digest, new_digest, detail "
                          "FROM audit_log ORDER BY seq").fetchall()  # fmt: skip
    finally:
        db.close()


def test_every_move_and_refusal_is_in_the_audit_log(registry):
    dev = Pusher(registry, DEV, "team/app")
    admin = Pusher(registry, ADMIN, "team/app")
    one, two = dev.image("one"), dev.image("two")
    admin.push("latest", one)
    admin.push("latest", two)
    dev.push("latest", one)  # refused
    admin.delete("latest")
    actions = [(a, s, t) for _, a, s, t, *_ in audit_rows(registry)]
    assert ("tag.create", "admin", "latest") in actions
    assert ("tag.move", "admin", "latest") in actions
    assert ("refused", "dev", "latest") in actions
    assert ("tag.delete", "admin", "latest") in actions
    # The refusal says which move was refused: from two, to one.
    (refused,) = [r for r in audit_rows(registry) if r[1] == "refused"]
    assert refused[4:6] == (sha256(two), sha256(one))
    verify = cli(registry, "audit", "verify")
    assert verify.returncode == 0, verify.stderr
    assert "intact" in verify.stdout


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder"])
def test_audit_chain_detects_tampering(registry, tamper):
    admin = Pusher(registry, ADMIN, "admin/app")
    for i in range(4):
        admin.push(f"1.0.{i}", admin.image(f"seed-{i}"))
    db = sqlite3.connect(registry.data / "metadata.db")
    if tamper == "edit":
        db.execute("UPDATE audit_log SET subject = 'someone-else' WHERE seq = 2")
    elif tamper == "delete":
        db.execute("DELETE FROM audit_log WHERE seq = 2")
    else:
        db.execute("UPDATE audit_log SET seq = 100 WHERE seq = 2")
        db.execute("UPDATE audit_log SET seq = 2 WHERE seq = 3")
        db.execute("UPDATE audit_log SET seq = 3 WHERE seq = 100")
    db.commit()
    db.close()
    verify = cli(registry, "audit", "verify")
    assert verify.returncode == 1
    assert "BROKEN" in verify.stderr


def test_tag_history_and_rollback(registry):
    admin = Pusher(registry, ADMIN, "admin/app")
    good, bad = admin.image("good"), admin.image("bad")
    admin.push("stable", good)
    admin.push("stable", bad)
    history = cli(registry, "tag", "history", "admin/app:stable")
    records = [json.loads(line) for line in history.stdout.splitlines()]
    assert [r["action"] for r in records] == ["tag.create", "tag.move"]
    assert records[1]["old_digest"] == sha256(good)
    assert records[1]["subject"] == "admin"
    rolled = cli(registry, "tag", "rollback", "admin/app:stable")
    assert rolled.returncode == 0, rolled.stderr
    got = admin.client.get("/v2/admin/app/manifests/stable")
    assert got.headers["docker-content-digest"] == sha256(good)


def test_rollback_obeys_immutable_tags(registry):
    dev = Pusher(registry, DEV, "team/app")
    first, second = dev.image("a"), dev.image("b")
    dev.push(sha256(second), second)
    dev.push("3.0.0", first)
    rolled = cli(registry, "tag", "rollback", "team/app:3.0.0", "--to", sha256(second))
    assert rolled.returncode == 1
    assert "immutable" in rolled.stderr
