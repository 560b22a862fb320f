"""What admins change while the registry runs: held look-alike names, names
allowed explicitly, and tag rules added through the admin API; each against
a real server, through its HTTP API and the `quaylock tag` command."""

from __future__ import annotations

import copy
import json

import pytest

from tests.helpers import error_code, sha256
from tests.test_tag_rules import ADMIN, DEV, RULES, Pusher, audit_rows, cli


def start(make_server, tags: dict, workers: int = 1):
    settings = copy.deepcopy(RULES)
    settings["tags"] = tags
    settings["server"] = {"workers": workers}
    server = make_server(settings, env={"QUAYLOCK_ADMIN_PASSWORD": ADMIN[1]})
    added = cli(server, "user", "add", DEV[0], "--group", "devs", "--password-stdin",
                stdin=DEV[1] + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    return server


HOLD_TAGS = {"rules": [{"repositories": ["**"], "protected": ["latest"],
                        "lookalike": "hold"}]}  # fmt: skip


def message(response) -> str:
    return response.json()["errors"][0]["message"]


def held_id(response) -> int:
    text = message(response)
    assert "held for an admin as hold " in text, text
    return int(text.split("held for an admin as hold ")[1].split(".")[0].split(";")[0])


def test_held_tag_waits_for_an_admin_then_points_at_the_pushed_digest(make_server):
    server = start(make_server, HOLD_TAGS)
    admin = Pusher(server, ADMIN, "team/app")
    dev = Pusher(server, DEV, "team/app")
    base = admin.image("base")
    assert admin.push("latest", base).status_code == 201
    spoof = dev.image("spoof")

    held = dev.push("lates", spoof)
    assert held.status_code == 403
    assert error_code(held) == "DENIED"
    assert "looks like 'latest'" in message(held)
    assert sha256(spoof) in message(held)
    hold = held_id(held)
    # The manifest is kept by digest; the tag does not exist yet.
    assert dev.client.get(f"/v2/team/app/manifests/{sha256(spoof)}").status_code == 200
    assert dev.client.get("/v2/team/app/manifests/lates").status_code == 404
    # A retry does not pile up holds.
    assert held_id(dev.push("lates", spoof)) == hold

    with server.client() as client:
        assert client.get("/admin/v1/holds", auth=DEV).status_code == 403
        pending = client.get("/admin/v1/holds", auth=ADMIN).json()
        assert [(h["id"], h["repository"], h["name"], h["digest"], h["subject"])
                for h in pending] == [
            (hold, "team/app", "lates", sha256(spoof), "dev")
        ]  # fmt: skip
        approved = client.post(
            f"/admin/v1/holds/{hold}", auth=ADMIN, json={"decision": "approve"}
        )
        assert approved.status_code == 200, approved.text
        assert approved.json()["state"] == "approved"
        assert approved.json()["decided_by"] == "admin"
        again = client.post(
            f"/admin/v1/holds/{hold}", auth=ADMIN, json={"decision": "reject"}
        )
        assert again.status_code == 409
        assert "approved" in message(again)
        assert client.get("/admin/v1/holds", auth=ADMIN).json() == []

    got = dev.client.get("/v2/team/app/manifests/lates")
    assert got.headers["docker-content-digest"] == sha256(spoof)
    actions = [(row[1], row[3]) for row in audit_rows(server)]
    assert ("held", "lates") in actions
    assert ("hold.approve", "lates") in actions
    assert ("tag.create", "lates") in actions
    verified = cli(server, "audit", "verify")
    assert verified.returncode == 0, verified.stderr


def test_rejected_hold_leaves_no_tag_and_a_retry_is_held_again(make_server):
    server = start(make_server, HOLD_TAGS)
    admin = Pusher(server, ADMIN, "team/app")
    dev = Pusher(server, DEV, "team/app")
    assert admin.push("latest", admin.image("base")).status_code == 201
    spoof = dev.image("spoof")
    first = held_id(dev.push("1atest", spoof))

    listed = cli(server, "tag", "holds")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [first]
    rejected = cli(server, "tag", "reject", str(first), "--as", "ops")
    assert rejected.returncode == 0, rejected.stderr
    assert json.loads(rejected.stdout)["state"] == "rejected"
    assert dev.client.get("/v2/team/app/manifests/1atest").status_code == 404

    second = held_id(dev.push("1atest", spoof))
    assert second != first
    # The command line approves too, as the operator on the machine.
    approved = cli(server, "tag", "approve", str(second))
    assert approved.returncode == 0, approved.stderr
    got = dev.client.get("/v2/team/app/manifests/1atest")
    assert got.headers["docker-content-digest"] == sha256(spoof)
    missing = cli(server, "tag", "approve", "999")
    assert missing.returncode == 1
    assert "hold 999 does not exist" in missing.stderr


def test_approval_never_moves_a_tag_that_exists_by_then(make_server):
    server = start(make_server, HOLD_TAGS)
    admin = Pusher(server, ADMIN, "team/app")
    dev = Pusher(server, DEV, "team/app")
    assert admin.push("latest", admin.image("base")).status_code == 201
    hold_a = held_id(dev.push("lates", dev.image("a")))
    hold_b = held_id(dev.push("lates", dev.image("b")))
    assert hold_a != hold_b
    with server.client() as client:
        first = client.post(f"/admin/v1/holds/{hold_a}", auth=ADMIN,
                            json={"decision": "approve"})  # fmt: skip
        assert first.status_code == 200, first.text
        # `lates` exists now: approving the other digest would move it.
        second = client.post(f"/admin/v1/holds/{hold_b}", auth=ADMIN,
                             json={"decision": "approve"})  # fmt: skip
        assert second.status_code == 409
        assert error_code(second) == "CONFLICT"
        assert "was created since" in message(second)
        pending = client.get("/admin/v1/holds", auth=ADMIN).json()
        assert [h["id"] for h in pending] == [hold_b]
    got = dev.client.get("/v2/team/app/manifests/lates")
    assert got.headers["docker-content-digest"] == sha256(dev.image("a"))


def test_a_rule_that_refuses_wins_over_one_that_would_hold(make_server):
    tags = copy.deepcopy(HOLD_TAGS)
    tags["rules"].append({"repositories": ["team/**"], "protected": ["lat.*"]})
    server = start(make_server, tags)
    admin = Pusher(server, ADMIN, "team/app")
    dev = Pusher(server, DEV, "team/app")
    assert admin.push("latest", admin.image("base")).status_code == 201
    refused = dev.push("latesst", dev.image("x"))
    assert refused.status_code == 403
    assert "protected" in message(refused)
    assert "held" not in message(refused)
    with server.client() as client:
        assert client.get("/admin/v1/holds", auth=ADMIN).json() == []


def test_pending_holds_are_capped_per_name(make_server):
    server = start(make_server, HOLD_TAGS)
    admin = Pusher(server, ADMIN, "team/app")
    dev = Pusher(server, DEV, "team/app")
    assert admin.push("latest", admin.image("base")).status_code == 201
    for i in range(5):
        held_id(dev.push("lates", dev.image(f"flood {i}")))
    refused = dev.push("lates", dev.image("one too many"))
    assert refused.status_code == 403
    assert "cannot be held for an admin" in message(refused)
    assert "the limit is 5" in message(refused)
    with server.client() as client:
        assert len(client.get("/admin/v1/holds", auth=ADMIN).json()) == 5


def test_held_repository_name_is_created_after_approval(make_server):
    server = start(make_server, {"rules": [], "repository_lookalike": "hold"})
    dev = Pusher(server, DEV, "team/web-app")
    assert dev.push("v1", dev.image("real")).status_code == 201
    spoof = Pusher(server, DEV, "team/web_app")
    started = spoof.client.post("/v2/team/web_app/blobs/uploads/")
    assert started.status_code == 403
    assert "looks like 'team/web-app'" in message(started)
    hold = held_id(started)
    assert dev.client.get("/v2/_catalog").json()["repositories"] == ["team/web-app"]

    with server.client() as client:
        (pending,) = client.get("/admin/v1/holds", auth=ADMIN).json()
        assert (pending["kind"], pending["name"]) == ("repository", "team/web_app")
        approved = client.post(f"/admin/v1/holds/{hold}", auth=ADMIN,
                               json={"decision": "approve"})  # fmt: skip
        assert approved.status_code == 200, approved.text
    assert spoof.push("v1", spoof.image("now allowed")).status_code == 201


def test_admin_allows_a_name_explicitly_and_can_take_it_back(make_server):
    server = start(make_server, {"rules": [{"repositories": ["**"],
                                            "protected": ["latest"]}]})  # fmt: skip
    admin = Pusher(server, ADMIN, "team/app")
    dev = Pusher(server, DEV, "team/app")
    assert admin.push("latest", admin.image("base")).status_code == 201
    manifest = dev.image("x")
    refused = dev.push("latest-", manifest)
    assert refused.status_code == 403
    assert "/admin/v1/allowed-names" in message(refused)

    name = {"kind": "tag", "repository": "team/app", "name": "latest-"}
    with server.client() as client:
        assert (
            client.post("/admin/v1/allowed-names", auth=DEV, json=name).status_code
            == 403
        )
        added = client.post("/admin/v1/allowed-names", auth=ADMIN, json=name)
        assert added.status_code == 201, added.text
        listed = client.get("/admin/v1/allowed-names", auth=ADMIN).json()
        assert [(n["kind"], n["repository"], n["name"]) for n in listed] == [
            ("tag", "team/app", "latest-")
        ]
    assert dev.push("latest-", manifest).status_code == 201
    # Allowed in that repository only.
    other = Pusher(server, DEV, "team/other")
    assert (
        Pusher(server, ADMIN, "team/other").push("latest", other.image("o")).status_code
        == 201
    )
    assert other.push("latest-", other.image("o2")).status_code == 403

    with server.client() as client:
        removed = client.delete("/admin/v1/allowed-names", auth=ADMIN, params=name)
        assert removed.status_code == 204
        gone = client.delete("/admin/v1/allowed-names", auth=ADMIN, params=name)
        assert gone.status_code == 404
    actions = [row[1] for row in audit_rows(server)]
    assert "allow.add" in actions and "allow.delete" in actions


@pytest.mark.parametrize(
    "body, words",
    [
        ({"repositories": "team/**"}, "rule.repositories: expected a list"),
        ({"repositories": []}, "rule.repositories: expected at least one pattern"),
        ({"immutable": ["("]}, "is not a regular expression"),
        (
            {"lookalike": "maybe"},
            "rule.lookalike: expected one of deny, hold, alert, off",
        ),
        ({"protected": ["x"], "colour": "red"}, "colour"),
        (["not", "a", "mapping"], "body must be a JSON object"),
        ({"protected": ["(v?[0-9a-z]+)+-rc"]}, "nests a repeat inside a repeat"),
        ({"protected": ["(a|aa)*"]}, "repeats an alternation"),
        ({"allow": [".*.*.*.*.*x"]}, "has 5 repeats of variable length"),
        ({"allow": [".{0,128}" * 6 + "!"]}, "has 6 repeats of variable length"),
        ({"allow": [".*" * 4 + "a?" * 3 + "!"]}, "has 7 repeated or optional parts"),
        ({"allow": ["(?>(?:a|aa)+!)"]}, "repeats an alternation"),
        ({"allow": ["(?>a*a*a*a*a*a*!)"]}, "has 6 repeats of variable length"),
        ({"allow": ["a{4294967296}"]}, "is not a regular expression"),
        ({"allow": ["\ud800"]}, "must be printable text"),
        ({"allow": ["x" * 300]}, "at most 256 characters"),
    ],
)
def test_bad_tag_rules_are_refused_with_the_key_that_is_wrong(make_server, body, words):
    server = start(make_server, HOLD_TAGS)
    with server.client() as client:
        # ASCII JSON, so that a lone surrogate travels as the escape \ud800.
        refused = client.post("/admin/v1/tag-rules", auth=ADMIN,
                              content=json.dumps(body).encode())  # fmt: skip
        assert refused.status_code == 400
        assert error_code(refused) == "BAD_REQUEST"
        assert words in message(refused)
        stored = client.get("/admin/v1/tag-rules", auth=ADMIN).json()
        assert [r["source"] for r in stored] == ["config"]


def test_tag_rule_added_by_an_admin_applies_in_every_worker_at_once(make_server):
    server = start(make_server, HOLD_TAGS, workers=2)
    dev = Pusher(server, DEV, "team/app")
    first, second = dev.image("one"), dev.image("two")
    assert dev.push("release-1", first).status_code == 201
    rule = {"repositories": ["team/**"], "immutable": ["release-.*"]}
    with server.client() as client:
        added = client.post("/admin/v1/tag-rules", auth=ADMIN, json=rule)
        assert added.status_code == 201, added.text
        rule_id = added.json()["id"]
        listed = client.get("/admin/v1/tag-rules", auth=ADMIN).json()
        assert [(r["source"], r["label"]) for r in listed] == [
            ("config", "tags.rules[0]"), ("admin", f"tag rule {rule_id}")
        ]  # fmt: skip
        assert listed[1]["rule"]["immutable"] == ["release-.*"]

    # Fresh connections land on both workers; none may miss the rule.
    for _ in range(10):
        with server.client() as fresh:
            fresh.headers["authorization"] = dev.client.headers["authorization"]
            moved = fresh.put(
                "/v2/team/app/manifests/release-1", content=second,
                headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
            )  # fmt: skip
            assert moved.status_code == 403
            assert f"tag rule {rule_id}" in message(moved)

    with server.client() as client:
        deleted = client.delete(f"/admin/v1/tag-rules/{rule_id}", auth=ADMIN)
        assert deleted.status_code == 204
        gone = client.delete(f"/admin/v1/tag-rules/{rule_id}", auth=ADMIN)
        assert gone.status_code == 404
        # Ids are never reused: "tag rule N" keeps naming one rule.
        again = client.post("/admin/v1/tag-rules", auth=ADMIN, json=rule)
        assert again.json()["id"] == rule_id + 1
        client.delete(f"/admin/v1/tag-rules/{rule_id + 1}", auth=ADMIN)
    assert dev.push("release-1", second).status_code == 201


def test_holds_come_a_page_at_a_time_newest_first(make_server):
    server = start(make_server, {"rules": [], "repository_lookalike": "hold"})
    dev = Pusher(server, DEV, "team/web-app")
    assert dev.push("v1", dev.image("real")).status_code == 201
    holds = [
        held_id(Pusher(server, DEV, name).client.post(f"/v2/{name}/blobs/uploads/"))
        for name in ("team/web_app", "team/web.app", "team/webapp")
    ]
    with server.client() as client:
        first = client.get("/admin/v1/holds", params={"n": 2}, auth=ADMIN)
        assert [h["id"] for h in first.json()] == holds[::-1][:2]
        link = first.headers["link"]
        assert f"last={holds[1]}" in link and 'rel="next"' in link
        rest = client.get(link[1 : link.index(">")], auth=ADMIN)
        assert [h["id"] for h in rest.json()] == [holds[0]]
        assert "link" not in rest.headers
        bad = client.get("/admin/v1/holds", params={"last": "x"}, auth=ADMIN)
        assert bad.status_code == 400
        assert "last must be a hold id" in message(bad)
    listed = cli(server, "tag", "holds")
    printed = [json.loads(line)["id"] for line in listed.stdout.splitlines()]
    assert printed == holds[::-1]


def test_the_repository_guard_compares_with_the_oldest_names_up_to_its_cap(make_server):
    server = start(make_server, {"rules": [], "repository_lookalike": "hold",
                                 "lookalike_max_names": 2})  # fmt: skip
    for name in ("team/aaa-one", "team/bbb-two", "team/ccc-three"):
        dev = Pusher(server, DEV, name)
        assert dev.push("v1", dev.image(name)).status_code == 201
    # The two oldest are guarded; the third is past the cap.
    guarded = Pusher(server, DEV, "team/aaa_one")
    assert guarded.client.post("/v2/team/aaa_one/blobs/uploads/").status_code == 403
    past = Pusher(server, DEV, "team/ccc_three")
    assert past.client.post("/v2/team/ccc_three/blobs/uploads/").status_code == 202
    warning = "repositories: only 2 are compared (tags.lookalike_max_names)"
    assert warning in server.log()


def test_junk_tags_do_not_push_a_protected_name_out_of_the_guard(tmp_path, make_server):
    from tests.conftest import start_server

    tags = {"rules": [{"repositories": ["**"], "protected": ["latest"],
                       "lookalike": "deny"}], "lookalike_max_names": 5}  # fmt: skip
    server = start(make_server, tags)
    admin = Pusher(server, ADMIN, "team/app")
    dev = Pusher(server, DEV, "team/app")
    assert admin.push("latest", admin.image("base")).status_code == 201
    junk = dev.image("junk")
    for i in range(8):  # more recent moves than the guard's window holds
        assert dev.push(f"junk-{i}", junk).status_code == 201
    # A new process rebuilds the guard from the window, and still has latest.
    server.stop()
    settings = copy.deepcopy(RULES)
    settings["tags"], settings["server"] = tags, {"workers": 1}
    again = start_server(
        server.data.parent, settings, env={"QUAYLOCK_ADMIN_PASSWORD": ADMIN[1]}
    )
    try:
        refused = Pusher(again, DEV, "team/app").push("1atest", junk)
        assert refused.status_code == 403, refused.text
        assert "looks like 'latest'" in message(refused)
    finally:
        again.stop()
