"""Accounts: users, groups and robot accounts, and who a request is.

Every request has a `Subject`: a user, a robot, or anonymous. Users log in
with a password; robots (for CI) with a secret that is shown once, expires,
and can be revoked. A robot acts within its own grants, which are checked
as well as its owner's rights, so it can never do more than its owner.

Robot names are ``robot$<name>``: the ``$`` cannot occur in a user name, so
a user can never pass for a robot or the other way round.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from quaylock.errors import (
    BadRequest,
    Conflict,
    NotFound,
    TooManyRequests,
    Unauthorized,
)
from quaylock.metadata import audit
from quaylock.metadata.store import SQLiteStore
from quaylock.policy import passwords
from quaylock.policy.limiter import LoginBusy, LoginLimiter

_SUBJECT_CACHE_MAX = 10_000
USER_NAME_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
ROBOT_PREFIX = "robot$"
# Who changes accounts in this request or command, for the audit log: an
# object with subject, client and user_agent (`services.tags.Actor`), set by
# the admin API and the command line; unset means "system".
ACTOR: contextvars.ContextVar = contextvars.ContextVar("account_actor", default=None)


@dataclass(frozen=True, slots=True)
class RobotGrant:
    repositories: tuple[str, ...]
    actions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Subject:
    """Who a request acts as."""

    kind: str  # "user", "robot" or "anonymous"
    name: str  # "" for anonymous; "robot$x" for robots
    groups: frozenset[str] = frozenset()
    admin: bool = False
    # For robots: the owner whose rights bound it, and its own grants.
    owner: str | None = None
    grants: tuple[RobotGrant, ...] = ()
    # Rights granted by a token from a trusted external issuer, as
    # (repository, actions) pairs; None when rights come from our rules.
    token_access: tuple[tuple[str, frozenset[str]], ...] | None = field(default=None)

    @property
    def label(self) -> str:
        return self.name or "anonymous"


ANONYMOUS = Subject("anonymous", "")


class Accounts:
    """Users and robots in the metadata store.

    Args:
        store: the metadata store (tables of schema step 2).
        limiter: counts failed logins.
    """

    def __init__(self, store: SQLiteStore, limiter: LoginLimiter):
        self.store = store
        self.limiter = limiter
        # name -> (subject, time it expires); see `subject`.
        self._cache: dict[str, tuple[Subject, float]] = {}
        self._cache_version = -1
        # Told of each account change's audit record once it commits
        # (the server hands these to webhooks and metrics).
        self.on_event = None

    # Logging in

    async def authenticate(self, name: str, secret: str, address: str) -> Subject:
        """Check a name and password (or robot secret) from `address`.

        Raises:
            TooManyRequests: this address, or this account from it, is locked
                after too many failures; `Retry-After` says for how long.
            Unauthorized: the name or the secret is wrong (one message for
                both, so names cannot be probed).
        """
        # Checks under way count against the lock until they end, so that
        # parallel guesses cannot all pass it (see limiter). A locked key
        # gets its turn at once, to be refused.
        try:
            async with self.limiter.turn(name, address) as locked:
                if locked:
                    raise _locked(locked)
                subject = await self._check(name, secret, address)
        except LoginBusy:
            error = TooManyRequests(
                "too many logins at once from this address; try again in a moment"
            )
            error.reason = "auth"
            error.headers["retry-after"] = "1"
            raise error from None
        await self.limiter.succeeded(name, address)
        return subject

    async def _check(self, name: str, secret: str, address: str) -> Subject:
        """The password check itself, in the caller's turn (which found the
        key not locked).

        Raises:
            Unauthorized: wrong name or secret (counted as a failure).
        """
        delay = await self.limiter.delay_for(name, address)
        if delay:
            await asyncio.sleep(delay)
        if name.startswith(ROBOT_PREFIX):
            subject = self._check_robot(name, secret)
        else:
            subject = await self._check_user(name, secret)
        if subject is None:
            await self.limiter.failed(name, address)
            raise Unauthorized("invalid username or password")
        return subject

    def credential_version(self, name: str) -> str | None:
        """What changes when a user's password or a robot's secret does:
        remembered logins are valid only while it is the same."""
        if name.startswith(ROBOT_PREFIX):
            row = self.store.read_one(
                "SELECT secret_hash FROM robots WHERE name = ?", (name,)
            )
        else:
            row = self.store.read_one(
                "SELECT password_hash FROM users WHERE name = ?", (name,)
            )
        return None if row is None else row[0]

    async def _check_user(self, name: str, password: str) -> Subject | None:
        row = self.store.read_one(
            "SELECT password_hash, disabled FROM users WHERE name = ?", (name,)
        )
        stored = row[0] if row else passwords.dummy_hash()
        ok = await asyncio.to_thread(passwords.verify_password, password, stored)
        if not ok or row is None or row[1]:
            return None
        if passwords.needs_upgrade(stored):
            await self.set_password(name, password)
        return self.user(name)

    def _check_robot(self, name: str, secret: str) -> Subject | None:
        row = self.store.read_one(
            "SELECT secret_hash FROM robots WHERE name = ?", (name,)
        )
        stored = row[0] if row else passwords.hash_secret("")
        ok = passwords.verify_secret(secret, stored)
        if not ok or row is None:
            return None
        return self.robot(name)

    # Who a token's subject is now (a revoked robot is nobody)

    def user(self, name: str) -> Subject | None:
        row = self.store.read_one(
            "SELECT admin, disabled FROM users WHERE name = ?", (name,)
        )
        if row is None or row[1]:
            return None
        groups = self.store.read_all(
            "SELECT group_name FROM user_groups WHERE user_name = ?", (name,)
        )
        return Subject("user", name, frozenset(g for (g,) in groups), bool(row[0]))

    def robot(self, name: str) -> Subject | None:
        row = self.store.read_one(
            "SELECT owner, grants, expires_at, revoked_at FROM robots WHERE name = ?",
            (name,),
        )
        if row is None:
            return None
        owner, grants, expires_at, revoked_at = row
        if revoked_at is not None or (
            expires_at is not None and expires_at < time.time()
        ):
            return None
        owner_subject = self.user(owner)
        if owner_subject is None:
            return None
        parsed = tuple(
            RobotGrant(tuple(g["repositories"]), tuple(g["actions"]))
            for g in json.loads(grants)
        )
        return Subject(
            "robot",
            name,
            owner_subject.groups,
            owner_subject.admin,
            owner=owner,
            grants=parsed,
        )

    def subject(self, name: str) -> Subject | None:
        """The subject `name` is now, or None when it is gone, disabled,
        revoked or expired.

        Answers are cached until the database changes (any commit by any
        process moves `data_version`), so a revocation takes effect on the
        next request while a flood of pulls costs one pragma a request.
        """
        version = self.store.data_version()
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version
        cached = self._cache.get(name)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        subject = self.robot(name) if name.startswith(ROBOT_PREFIX) else self.user(name)
        if subject is not None:
            expires = self._robot_expiry(name) if subject.kind == "robot" else None
            if len(self._cache) >= _SUBJECT_CACHE_MAX:
                self._cache.clear()
            self._cache[name] = (subject, expires or float("inf"))
        return subject

    def _robot_expiry(self, name: str) -> float | None:
        row = self.store.read_one(
            "SELECT expires_at FROM robots WHERE name = ?", (name,)
        )
        return row[0] if row else None

    # Managing accounts

    def list_users(self, limit: int = -1, after: str = "") -> list[dict]:
        """Users by name, after `after`, at most `limit` (-1: all)."""
        rows = self.store.read_all(
            "SELECT name, admin, disabled, created_at FROM users WHERE name > ? "
            "ORDER BY name LIMIT ?",
            (after, limit),
        )
        result = []
        for name, admin, disabled, created_at in rows:
            groups = self.store.read_all(
                "SELECT group_name FROM user_groups WHERE user_name = ? ORDER BY 1",
                (name,),
            )
            result.append(
                {
                    "name": name,
                    "admin": bool(admin),
                    "disabled": bool(disabled),
                    "groups": [g for (g,) in groups],
                    "created_at": created_at,
                }
            )
        return result

    async def _write(self, fn, action: str, detail: str) -> None:
        """Run `fn` in a write transaction with its audit record: who (the
        `ACTOR` of this request or command), what, and never a secret."""
        by = ACTOR.get()
        event = audit.AuditEvent(
            action,
            by.subject if by else "system",
            by.client if by else None,
            by.user_agent if by else None,
            detail=detail,
        )

        def write(c):
            fn(c)
            audit.append(c, event)

        await self.store.write(write)
        if self.on_event is not None:
            self.on_event(event)

    async def add_user(
        self, name: str, password: str, admin: bool = False, groups: list[str] = ()
    ) -> None:
        """Create a user.

        Raises:
            Conflict: the name is taken.
            BadRequest: not a valid user name.
        """
        check_user_name(name)
        check_groups(groups)
        hashed = await asyncio.to_thread(
            passwords.hash_password, check_password(password)
        )
        now = time.time()

        def write(c):
            if c.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"user {name} exists already")
            c.execute(
                "INSERT INTO users VALUES (?, ?, ?, 0, ?, ?)",
                (name, hashed, int(admin), now, now),
            )
            c.executemany(
                "INSERT INTO user_groups VALUES (?, ?)", [(name, g) for g in groups]
            )

        detail = f"user {name}, admin {bool(admin)}, groups {sorted(groups)}"
        await self._write(write, "user.add", detail)

    async def set_password(
        self, name: str, password: str, stored: str | None = None
    ) -> None:
        """Set a password, or store an already-hashed one (`stored`)."""
        hashed = stored or await asyncio.to_thread(
            passwords.hash_password, check_password(password)
        )
        await self._update_user(name, "password_hash = ?", (hashed,), "password")

    async def set_admin(self, name: str, admin: bool) -> None:
        await self._update_user(name, "admin = ?", (int(admin),), f"admin {admin}")

    async def set_disabled(self, name: str, disabled: bool) -> None:
        await self._update_user(
            name, "disabled = ?", (int(disabled),), f"disabled {disabled}"
        )

    async def set_groups(self, name: str, groups: list[str]) -> None:
        check_user_name(name)
        check_groups(groups)

        def write(c):
            _require_user(c, name)
            c.execute("DELETE FROM user_groups WHERE user_name = ?", (name,))
            c.executemany(
                "INSERT INTO user_groups VALUES (?, ?)", [(name, g) for g in groups]
            )

        await self._write(write, "user.update", f"user {name}, groups {sorted(groups)}")

    async def delete_user(self, name: str) -> None:
        check_user_name(name)

        def write(c):
            _require_user(c, name)
            c.execute("DELETE FROM user_groups WHERE user_name = ?", (name,))
            c.execute("DELETE FROM users WHERE name = ?", (name,))
            c.execute(
                "UPDATE robots SET revoked_at = ? WHERE owner = ? AND revoked_at IS NULL",
                (time.time(), name),
            )

        await self._write(write, "user.delete", f"user {name}, and its robots revoked")

    async def _update_user(
        self, name: str, assignment: str, args: tuple, what: str
    ) -> None:
        check_user_name(name)

        def write(c):
            _require_user(c, name)
            c.execute(
                f"UPDATE users SET {assignment}, updated_at = ? WHERE name = ?",
                (*args, time.time(), name),
            )

        await self._write(write, "user.update", f"user {name}, {what}")

    async def import_htpasswd(self, text: str) -> list[str]:
        """Create users from htpasswd lines with bcrypt hashes; return names.

        Raises:
            BadRequest: a line is not ``name:$2y$...``.
            Conflict: a line names an existing user.
        """
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            name, sep, hashed = line.strip().partition(":")
            if not sep or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                raise BadRequest(
                    f"htpasswd line {number}: only bcrypt entries can be imported"
                )
            check_user_name(name)
            entries.append((name, hashed))
        now = time.time()

        def write(c):
            for name, hashed in entries:
                if c.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                    raise Conflict(f"user {name} exists already")
                c.execute(
                    "INSERT INTO users VALUES (?, ?, 0, 0, ?, ?)",
                    (name, hashed, now, now),
                )

        names = ", ".join(name for name, _ in entries)
        await self._write(write, "user.add", f"users {names} from htpasswd")
        return [name for name, _ in entries]

    # Robots

    async def add_robot(
        self,
        name: str,
        owner: str,
        grants: list[dict],
        expires_in_seconds: int | None,
    ) -> str:
        """Create robot ``robot$<name>`` for `owner`; return its secret,
        which is stored only as a hash and cannot be shown again."""
        check_user_name(name)
        check_user_name(owner)
        check_expiry(expires_in_seconds)
        full = ROBOT_PREFIX + name
        checked = [
            {
                "repositories": check_grant_patterns(g["repositories"]),
                "actions": list(g["actions"]),
            }
            for g in grants
        ]
        secret = passwords.new_secret()
        now = time.time()
        expires = now + expires_in_seconds if expires_in_seconds else None

        def write(c):
            _require_user(c, owner)
            if c.execute("SELECT 1 FROM robots WHERE name = ?", (full,)).fetchone():
                raise Conflict(f"robot {full} exists already")
            c.execute(
                "INSERT INTO robots VALUES (?, ?, ?, ?, ?, NULL, ?)",
                (
                    full,
                    owner,
                    passwords.hash_secret(secret),
                    json.dumps(checked),
                    expires,
                    now,
                ),
            )

        detail = (
            f"robot {full} of {owner}, grants {json.dumps(checked)}, "
            f"expires in {expires_in_seconds or 'never'} s"
        )
        await self._write(write, "robot.add", detail)
        return secret

    async def revoke_robot(self, name: str) -> None:
        full = name if name.startswith(ROBOT_PREFIX) else ROBOT_PREFIX + name
        check_user_name(full[len(ROBOT_PREFIX) :])

        def write(c):
            cursor = c.execute(
                "UPDATE robots SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (time.time(), full),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"no active robot {full}")

        await self._write(write, "robot.revoke", f"robot {full}")

    def list_robots(self, limit: int = -1, after: str = "") -> list[dict]:
        """Robots by name, after `after`, at most `limit` (-1: all)."""
        rows = self.store.read_all(
            "SELECT name, owner, grants, expires_at, revoked_at, created_at "
            "FROM robots WHERE name > ? ORDER BY name LIMIT ?",
            (after, limit),
        )
        return [
            {
                "name": name,
                "owner": owner,
                "grants": json.loads(grants),
                "expires_at": expires_at,
                "revoked_at": revoked_at,
                "created_at": created_at,
            }
            for name, owner, grants, expires_at, revoked_at, created_at in rows
        ]

    # First start

    async def ensure_admin(self, data: Path, password: str | None) -> Path | None:
        """Create user `admin` when there are no users at all.

        The password is `password` (from QUAYLOCK_ADMIN_PASSWORD) or a new
        random one written to ``<data>/admin-password``, readable by the
        owner only. Returns that file's path when one was written.
        """
        if self.store.read_one("SELECT 1 FROM users LIMIT 1") is not None:
            return None
        path = None
        if not password:
            password = secrets.token_urlsafe(18)
            path = data / "admin-password"
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
        try:
            await self.add_user("admin", password, admin=True)
        except Conflict:
            return None  # another process made it first
        return path


def check_user_name(name: str) -> str:
    if len(name) > 64 or not USER_NAME_RE.fullmatch(name):
        raise BadRequest(
            f"invalid account name {name[:64]!r}: lower-case letters and digits, "
            "joined by single '.', '_' or '-', at most 64 characters"
        )
    return name


def check_groups(groups) -> list[str]:
    """Group names follow the account name rules."""
    for group in groups:
        check_user_name(group)
    return list(groups)


def check_password(password: str) -> str:
    if not password.isprintable():
        raise BadRequest("a password must be printable text (no control characters)")
    return password


# Robots live at most ten years; refuse what no clock can add.
ROBOT_MAX_SECONDS = 10 * 365 * 24 * 3600


def check_expiry(seconds: int | None) -> int | None:
    if seconds is not None and not 1 <= seconds <= ROBOT_MAX_SECONDS:
        raise BadRequest(
            f"expires_in_seconds must be between 1 and {ROBOT_MAX_SECONDS}, got "
            f"{str(seconds)[:20]}"
        )
    return seconds


def check_grant_patterns(patterns) -> list[str]:
    for pattern in patterns:
        if not pattern or len(pattern) > 255 or not pattern.isprintable():
            raise BadRequest(
                f"repository pattern {pattern[:64]!r} must be printable text of 1 "
                "to 255 characters"
            )
    return list(patterns)


def _require_user(c, name: str) -> None:
    if c.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is None:
        raise NotFound(f"no user {name}")


def _locked(wait: float) -> TooManyRequests:
    """The refusal of a login whose address, or account at that address,
    is locked for `wait` more seconds."""
    error = TooManyRequests(
        f"too many failed logins from this address; try again in {int(wait) + 1} s"
    )
    error.reason = "auth"
    error.headers["retry-after"] = str(int(wait) + 1)
    return error
