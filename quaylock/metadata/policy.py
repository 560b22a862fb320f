"""What admins change while the registry runs: tag rules beyond the
configuration file, names allowed although they look like others, and
look-alike names held for an admin's decision.

Every change bumps `policy_version` in the same transaction, so a process
that caches these (`services.tags.TagGuard`) reloads them when, and only
when, the number it reads differs from the one it loaded.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass

HOLD_STATES = ("pending", "approved", "rejected")
# Pending holds one subject may have, and one name may have: beyond these a
# look-alike push is refused outright, so nobody can bury real holds.
MAX_PENDING_PER_SUBJECT = 20
MAX_PENDING_PER_NAME = 5


class TooManyHolds(Exception):
    """The subject or the name has the most pending holds allowed."""


@dataclass(frozen=True, slots=True)
class Hold:
    id: int
    kind: str  # "tag" or "repository"
    repository: str
    name: str  # the tag, or for kind "repository" the repository itself
    digest: str | None
    reason: str
    subject: str
    client: str | None
    created_at: float
    state: str
    decided_by: str | None
    decided_at: float | None

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "repository": self.repository,
            "name": self.name,
            "digest": self.digest,
            "reason": self.reason,
            "subject": self.subject,
            "client": self.client,
            "created_at": self.created_at,
            "state": self.state,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
        }


def version(c: sqlite3.Connection) -> int:
    return c.execute("SELECT version FROM policy_version WHERE id = 1").fetchone()[0]


def _bump(c: sqlite3.Connection) -> None:
    c.execute("UPDATE policy_version SET version = version + 1 WHERE id = 1")


def stored_rules(c: sqlite3.Connection) -> list[tuple[int, dict]]:
    return [
        (rule_id, json.loads(raw))
        for rule_id, raw in c.execute("SELECT id, rule FROM tag_rules ORDER BY id")
    ]


def add_rule(c: sqlite3.Connection, raw: dict, by: str) -> int:
    cursor = c.execute(
        "INSERT INTO tag_rules (rule, created_by, created_at) VALUES (?, ?, ?)",
        (json.dumps(raw, separators=(",", ":")), by, time.time()),
    )
    _bump(c)
    return cursor.lastrowid


def delete_rule(c: sqlite3.Connection, rule_id: int) -> bool:
    deleted = c.execute("DELETE FROM tag_rules WHERE id = ?", (rule_id,)).rowcount
    _bump(c)
    return deleted > 0


def allowed_names(c: sqlite3.Connection) -> frozenset[tuple[str, str, str]]:
    return frozenset(c.execute("SELECT kind, repository, name FROM allowed_names"))


def list_allowed(c: sqlite3.Connection) -> list[dict]:
    return [
        {"kind": k, "repository": r, "name": n, "created_by": by, "created_at": at}
        for k, r, n, by, at in c.execute(
            "SELECT kind, repository, name, created_by, created_at "
            "FROM allowed_names ORDER BY kind, repository, name"
        )
    ]


def allow(
    c: sqlite3.Connection, kind: str, repository: str, name: str, by: str
) -> None:
    c.execute(
        "INSERT INTO allowed_names VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (kind, repository, name, by, time.time()),
    )
    _bump(c)


def disallow(c: sqlite3.Connection, kind: str, repository: str, name: str) -> bool:
    deleted = c.execute(
        "DELETE FROM allowed_names WHERE kind = ? AND repository = ? AND name = ?",
        (kind, repository, name),
    ).rowcount
    _bump(c)
    return deleted > 0


_HOLD_COLUMNS = (
    "id, kind, repository, name, digest, reason, subject, client, created_at, "
    "state, decided_by, decided_at"
)


def add_hold(
    c: sqlite3.Connection,
    kind: str,
    repository: str,
    name: str,
    digest: str | None,
    reason: str,
    subject: str,
    client: str | None,
) -> int:
    """Record a held name; a pending hold of the same name and digest is
    reused, so a client that retries does not pile up requests."""
    row = c.execute(
        "SELECT id FROM holds WHERE state = 'pending' AND kind = ? AND repository = ? "
        "AND name = ? AND digest IS ?",
        (kind, repository, name, digest),
    ).fetchone()
    if row is not None:
        return row[0]
    (by_subject,) = c.execute(
        "SELECT count(*) FROM holds WHERE state = 'pending' AND subject = ?", (subject,)
    ).fetchone()
    if by_subject >= MAX_PENDING_PER_SUBJECT:
        raise TooManyHolds(
            f"{subject} has {by_subject} look-alike names waiting for an admin "
            f"already; the limit is {MAX_PENDING_PER_SUBJECT}"
        )
    (by_name,) = c.execute(
        "SELECT count(*) FROM holds WHERE state = 'pending' AND kind = ? "
        "AND repository = ? AND name = ?",
        (kind, repository, name),
    ).fetchone()
    if by_name >= MAX_PENDING_PER_NAME:
        raise TooManyHolds(
            f"{name!r} has {by_name} holds waiting for an admin already; the "
            f"limit is {MAX_PENDING_PER_NAME}"
        )
    cursor = c.execute(
        "INSERT INTO holds (kind, repository, name, digest, reason, subject, client, "
        "created_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
        (kind, repository, name, digest, reason, subject, client, time.time()),
    )
    return cursor.lastrowid


def get_hold(c: sqlite3.Connection, hold_id: int) -> Hold | None:
    row = c.execute(
        f"SELECT {_HOLD_COLUMNS} FROM holds WHERE id = ?", (hold_id,)
    ).fetchone()
    return Hold(*row) if row else None


def list_holds(
    c: sqlite3.Connection, state: str | None, limit: int, before: int | None = None
) -> list[Hold]:
    """Holds in `state` (None: any), newest first, older than hold `before`."""
    where, args = ["id < ?"], [before if before is not None else 2**63 - 1]
    if state is not None:
        where.append("state = ?")
        args.append(state)
    rows = c.execute(
        f"SELECT {_HOLD_COLUMNS} FROM holds WHERE {' AND '.join(where)} "
        "ORDER BY id DESC LIMIT ?",
        (*args, limit),
    )
    return [Hold(*row) for row in rows]


def decide_hold(c: sqlite3.Connection, hold_id: int, state: str, by: str) -> None:
    c.execute(
        "UPDATE holds SET state = ?, decided_by = ?, decided_at = ? WHERE id = ?",
        (state, by, time.time(), hold_id),
    )
