"""Access rules, login limits and scope parsing, without a server."""

from __future__ import annotations

import asyncio

import pytest

from quaylock.config import AuthRule
from quaylock.policy.access import AccessPolicy, matches
from quaylock.policy.accounts import ANONYMOUS, RobotGrant, Subject
from quaylock.policy.buckets import LocalBuckets
from quaylock.policy.clients import address_key
from quaylock.policy.limiter import LoginLimiter
from quaylock.policy.tokens import Access, parse_scope

ALICE = Subject("user", "alice", frozenset({"ci"}))
ADMIN = Subject("user", "root", admin=True)


@pytest.mark.parametrize(
    "pattern, name, expected",
    [
        ("team/*", "team/app", True),
        ("team/*", "team/app/x", False),
        ("team/**", "team/app/x", True),
        ("team/**", "teamx/app", False),
        ("*", "app", True),
        ("*", "a/b", False),
        ("lib.x/*", "libxx/a", False),
        ("a/b", "a/b", True),
        ("a/b", "a/bc", False),
    ],
)
def test_repository_patterns(pattern, name, expected):
    assert matches(pattern, name) is expected


def test_users_own_their_namespace_and_nothing_else():
    policy = AccessPolicy([])
    assert policy.allowed(ALICE, "alice") == {"pull", "push", "delete", "tag-admin"}
    assert policy.allowed(ALICE, "alice/app/x") == {
        "pull",
        "push",
        "delete",
        "tag-admin",
    }
    assert policy.allowed(ALICE, "alicex/app") == frozenset()
    assert policy.allowed(ALICE, "bob/app") == frozenset()
    assert policy.allowed(ANONYMOUS, "alice/app") == frozenset()
    assert policy.allowed(ADMIN, "anything/at/all") == {
        "pull",
        "push",
        "delete",
        "tag-admin",
    }


def test_rules_grant_by_user_group_and_anonymous():
    policy = AccessPolicy(
        [
            AuthRule(["group:ci"], ["shared/**"], ["pull", "push"]),
            AuthRule(["anonymous"], ["public/*"], ["pull"]),
            AuthRule(["user:b*"], ["b-team/*"], ["*"]),
        ]
    )
    assert policy.allowed(ALICE, "shared/x/y") == {"pull", "push"}
    assert policy.allowed(ANONYMOUS, "public/app") == {"pull"}
    assert policy.allowed(ANONYMOUS, "shared/x") == frozenset()
    # What anyone may do, a signed-in user or a robot may do too.
    assert policy.allowed(ALICE, "public/app") == {"pull"}
    robot = Subject("robot", "robot$ci", owner="carol")
    assert policy.allowed(robot, "public/app") == {"pull"}
    assert policy.allowed(Subject("user", "bob"), "b-team/app") == {
        "pull",
        "push",
        "delete",
        "tag-admin",
    }
    assert policy.may_list_catalog(ANONYMOUS)


def test_robot_is_bounded_by_its_grants_and_its_owner():
    policy = AccessPolicy([])
    robot = Subject(
        "robot",
        "robot$ci",
        owner="alice",
        grants=(RobotGrant(("alice/app", "bob/app"), ("pull", "push")),),
    )
    assert policy.allowed(robot, "alice/app") == {"pull", "push"}
    # Granted, but its owner may not: nothing.
    assert policy.allowed(robot, "bob/app") == frozenset()
    # Its owner may, but the robot's grants do not reach there.
    assert policy.allowed(robot, "alice/other") == frozenset()


def test_external_token_grants_exactly_its_access():
    subject = Subject("user", "ext", token_access=(("x/y", frozenset({"pull"})),))
    policy = AccessPolicy([])
    assert policy.allowed(subject, "x/y") == {"pull"}
    assert policy.allowed(subject, "x/z") == frozenset()


def test_scope_parsing():
    scopes = parse_scope(
        "repository:a/b:pull,push repository(plugin):c:pull registry:catalog:* junk x:y"
    )
    assert scopes == [
        Access("repository", "a/b", frozenset({"pull", "push"})),
        Access("repository", "c", frozenset({"pull"})),
        Access("registry", "catalog", frozenset({"*"})),
    ]


def test_lockout_is_per_address_and_per_account_at_address():
    asyncio.run(_lockout_is_per_address_and_per_account_at_address())


async def _lockout_is_per_address_and_per_account_at_address():
    clock = [1000.0]
    buckets = LocalBuckets(clock=lambda: clock[0])
    limiter = LoginLimiter(limit=3, lock_seconds=60, buckets=buckets)
    for _ in range(2):
        await limiter.failed("alice", "10.0.0.1")
    assert await limiter.locked_for("alice", "10.0.0.1") == 0
    await limiter.failed("alice", "10.0.0.1")
    assert await limiter.locked_for("alice", "10.0.0.1") == 60
    assert await limiter.locked_for("bob", "10.0.0.1") == 60
    # The address is locked for everyone; its owner elsewhere is not.
    assert await limiter.locked_for("alice", "10.0.0.2") == 0
    clock[0] += 30
    assert await limiter.locked_for("alice", "10.0.0.1") == 30
    clock[0] += 31
    assert await limiter.locked_for("alice", "10.0.0.1") == 0
    # The counts are forgotten with the lock: the next failure starts anew.
    await limiter.failed("alice", "10.0.0.1")
    assert await limiter.locked_for("alice", "10.0.0.1") == 0


def test_a_login_that_succeeds_clears_its_account_but_not_its_address():
    asyncio.run(_a_login_that_succeeds_clears_its_account_but_not_its_address())


async def _a_login_that_succeeds_clears_its_account_but_not_its_address():
    limiter = LoginLimiter(limit=4, lock_seconds=60)
    for _ in range(3):
        await limiter.failed("alice", "10.0.0.1")
    assert await limiter.delay_for("alice", "10.0.0.1") > 0
    await limiter.succeeded("alice", "10.0.0.1")
    assert await limiter.delay_for("alice", "10.0.0.1") == 0
    # Three failures for the address stay: one more from anyone locks it.
    await limiter.failed("bob", "10.0.0.1")
    assert 59 < await limiter.locked_for("carol", "10.0.0.1") <= 60


def test_ipv6_addresses_count_by_their_64():
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1")
    assert address_key("2001:db8:0:1::1") != address_key("2001:db8::1")
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"
