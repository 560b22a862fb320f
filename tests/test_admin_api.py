"""The admin HTTP API: only admins, users and robots end to end."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import error_code

ADMIN = ("admin", "admin-password-1")


@pytest.fixture
def registry(make_server):
    return make_server(
        {"auth": {"mode": "token"}}, env={"QUAYLOCK_ADMIN_PASSWORD": ADMIN[1]}
    )


def token_for(client: httpx.Client, auth: tuple[str, str], scope: str) -> str:
    response = client.get(
        "/v2/token", params={"service": "quaylock", "scope": scope}, auth=auth
    )
    assert response.status_code == 200, response.text
    return response.json()["token"]


def test_admin_manages_users_and_robots(registry):
    with registry.client() as client:
        created = client.post(
            "/admin/v1/users",
            auth=ADMIN,
            json={"name": "alice", "password": "alice-pass-1", "groups": ["dev"]},
        )
        assert created.status_code == 201, created.text
        users = client.get("/admin/v1/users", auth=ADMIN).json()
        assert [u["name"] for u in users] == ["admin", "alice"]
        assert users[1]["groups"] == ["dev"]

        robot = client.post(
            "/admin/v1/robots",
            auth=ADMIN,
            json={
                "name": "ci",
                "owner": "alice",
                "repositories": ["alice/app"],
                "actions": ["pull"],
            },
        )
        assert robot.status_code == 201, robot.text
        secret = robot.json()["secret"]
        assert robot.json()["name"] == "robot$ci"
        listed = client.get("/admin/v1/robots", auth=ADMIN).text
        assert secret not in listed

        token = token_for(client, ("robot$ci", secret), "repository:alice/app:pull")
        tags = client.get(
            "/v2/alice/app/tags/list", headers={"authorization": f"Bearer {token}"}
        )
        assert tags.status_code == 404  # allowed in; the repository is empty
        assert client.delete("/admin/v1/robots/ci", auth=ADMIN).status_code == 204
        after = client.get(
            "/v2/alice/app/tags/list", headers={"authorization": f"Bearer {token}"}
        )
        assert after.status_code == 401

        disabled = client.patch(
            "/admin/v1/users/alice", auth=ADMIN, json={"disabled": True}
        )
        assert disabled.status_code == 200
        refused = client.get("/v2/token", auth=("alice", "alice-pass-1"))
        assert refused.status_code == 401


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", "/admin/v1/users", None),
        ("POST", "/admin/v1/users", {"name": "x", "password": "12345678"}),
        ("DELETE", "/admin/v1/users/admin", None),
        ("POST", "/admin/v1/robots", {"name": "r", "owner": "admin"}),
        ("GET", "/admin/v1/tag-rules", None),
        ("POST", "/admin/v1/tag-rules", {"protected": [".*"]}),
        ("DELETE", "/admin/v1/tag-rules/1", None),
        ("GET", "/admin/v1/allowed-names", None),
        ("POST", "/admin/v1/allowed-names", {"kind": "repository", "name": "x"}),
        ("GET", "/admin/v1/holds", None),
        ("POST", "/admin/v1/holds/1", {"decision": "approve"}),
    ],
)
def test_non_admins_are_refused(registry, method, path, body):
    with registry.client() as client:
        client.post(
            "/admin/v1/users",
            auth=ADMIN,
            json={"name": "bob", "password": "bob-pass-12"},
        )
        anonymous = client.request(method, path, json=body)
        assert anonymous.status_code == 401
        assert "www-authenticate" in anonymous.headers
        user = client.request(method, path, json=body, auth=("bob", "bob-pass-12"))
        assert user.status_code == 403
        assert error_code(user) == "DENIED"


@pytest.mark.parametrize(
    "body, code",
    [
        ({"name": "Bad Name", "password": "12345678"}, "BAD_REQUEST"),
        ({"name": "carol", "password": "short"}, "BAD_REQUEST"),
        ({"name": "carol"}, "BAD_REQUEST"),
        ({"name": "admin", "password": "12345678"}, "CONFLICT"),
        ({"name": 7, "password": "12345678"}, "BAD_REQUEST"),
    ],
)
def test_bad_user_bodies_are_refused_with_a_reason(registry, body, code):
    with registry.client() as client:
        response = client.post("/admin/v1/users", auth=ADMIN, json=body)
        assert 400 <= response.status_code < 500
        assert error_code(response) == code
        assert response.json()["errors"][0]["message"]


def test_admin_tokens_need_the_admin_scope(registry):
    with registry.client() as client:
        pull_only = token_for(client, ADMIN, "repository:admin/app:pull")
        refused = client.get(
            "/admin/v1/users", headers={"authorization": f"Bearer {pull_only}"}
        )
        assert refused.status_code == 401
        scoped = token_for(client, ADMIN, "registry:admin:*")
        allowed = client.get(
            "/admin/v1/users", headers={"authorization": f"Bearer {scoped}"}
        )
        assert allowed.status_code == 200
        # A non-admin asking for the scope is not given it.
        client.post(
            "/admin/v1/users",
            auth=ADMIN,
            json={"name": "eve", "password": "eve-pass-12"},
        )
        eve = token_for(client, ("eve", "eve-pass-12"), "registry:admin:*")
        assert (
            client.get(
                "/admin/v1/users", headers={"authorization": f"Bearer {eve}"}
            ).status_code
            == 401
        )


def test_account_changes_are_in_the_audit_log_with_who_made_them(registry):
    import getpass
    import sqlite3

    from tests.test_tag_rules import cli

    with registry.client() as client:
        headers = {"user-agent": "admin-console/1.0"}
        client.post("/admin/v1/users", auth=ADMIN, headers=headers,
                    json={"name": "carol", "password": "carol-pass-1"})  # fmt: skip
        client.patch("/admin/v1/users/carol", auth=ADMIN, json={"disabled": True})
        client.post("/admin/v1/robots", auth=ADMIN, json={
            "name": "builder", "owner": "carol", "repositories": ["carol/**"],
            "actions": ["pull"]})  # fmt: skip
        client.delete("/admin/v1/robots/builder", auth=ADMIN)
    added = cli(registry, "user", "add", "dave", "--password-stdin",
                stdin="dave-pass-12\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    no_terminal = cli(registry, "user", "add", "erin")  # stdin is not a terminal
    assert no_terminal.returncode != 0
    assert "--password-stdin" in no_terminal.stderr
    assert "Traceback" not in no_terminal.stderr

    db = sqlite3.connect(registry.data / "metadata.db")
    try:
        rows = db.execute(
            "SELECT action, subject, user_agent, detail FROM audit_log "
            "WHERE action LIKE 'user.%' OR action LIKE 'robot.%' ORDER BY seq"
        ).fetchall()
    finally:
        db.close()
    actions = [(action, subject) for action, subject, _, _ in rows]
    assert actions[-5:] == [
        ("user.add", "admin"), ("user.update", "admin"), ("robot.add", "admin"),
        ("robot.revoke", "admin"), ("user.add", f"cli:{getpass.getuser()}"),
    ]  # fmt: skip
    assert rows[-5][2] == "admin-console/1.0"
    assert "carol-pass-1" not in repr(rows)
    verified = cli(registry, "audit", "verify")
    assert verified.returncode == 0, verified.stderr


@pytest.mark.parametrize(
    "path, body, words",
    [
        ("/admin/v1/users", {"name": "x1", "password": "12345678", "groups": ["\ud800"]},
         "invalid account name"),
        ("/admin/v1/users", {"name": "x2", "password": "1234\ud8005678"},
         "must be printable text"),
        ("/admin/v1/users", {"name": "x3", "password": "1234\n5678"},
         "must be printable text"),
        ("/admin/v1/robots", {"name": "r1", "owner": "\ud800", "repositories": ["a/**"],
                              "actions": ["pull"]}, "invalid account name"),
        ("/admin/v1/robots", {"name": "r2", "owner": "admin", "repositories": ["a/**"],
                              "actions": ["pull"], "expires_in_seconds": 10**400},
         "expires_in_seconds must be between 1 and"),
        ("/admin/v1/robots", {"name": "r3", "owner": "admin", "repositories": ["a/**"],
                              "actions": ["pull"], "expires_in_seconds": -5},
         "expires_in_seconds must be between 1 and"),
        ("/admin/v1/robots", {"name": "r4", "owner": "admin",
                              "repositories": ["team/\ud800"], "actions": ["pull"]},
         "must be printable text"),
    ],
)  # fmt: skip
def test_odd_account_input_is_a_400_naming_the_field(registry, path, body, words):
    import json

    with registry.client() as client:
        # ASCII JSON, so that lone surrogates travel as escapes.
        refused = client.post(path, auth=ADMIN, content=json.dumps(body).encode())
        assert refused.status_code == 400, refused.text
        assert error_code(refused) == "BAD_REQUEST"
        assert words in refused.json()["errors"][0]["message"]


def test_user_and_robot_lists_come_in_pages(registry):
    with registry.client() as client:
        for i in range(5):
            created = client.post("/admin/v1/users", auth=ADMIN, json={
                "name": f"pager{i}", "password": f"pager-pass-{i}x"})  # fmt: skip
            assert created.status_code == 201, created.text
        seen, url = [], "/admin/v1/users?n=2"
        while url:
            page = client.get(url, auth=ADMIN)
            assert page.status_code == 200
            assert len(page.json()) <= 2
            seen += [u["name"] for u in page.json()]
            link = page.headers.get("link")
            url = link[1 : link.index(">")] if link else None
        assert seen == sorted(seen) and {f"pager{i}" for i in range(5)} <= set(seen)
        assert len(seen) == len(set(seen))
        bad = client.get("/admin/v1/users?n=x", auth=ADMIN)
        assert bad.status_code == 400
