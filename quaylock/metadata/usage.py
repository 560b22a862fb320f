"""Stored bytes per repository, namespace and user, for quotas, and the
bytes upload sessions stage.

The `usage` table is kept in the transaction that links or unlinks a blob,
or stores or deletes a manifest: each counts once per repository, once per
namespace however many of its repositories hold it, and for the user whose
push or mount stored it there. A robot's pushes count for the user who owns
it, so a user cannot pass a quota by making robots. Upload sessions reserve
bytes as they stream (`uploads.reserved`); reserved bytes count against the
same quotas, so parallel uploads cannot together pass one.

A namespace is a repository name's first part (``team`` for ``team/app``;
``alpine`` for ``alpine``).

The `staged` table holds, per session subject and for all sessions (subject
``''``), the bytes that upload sessions hold on disk or have reserved for a
chunk in flight (`session_changed`); the staging caps and the disk floor are
checked against it in the transaction that reserves, so parallel chunks
cannot together pass them either.
"""

from __future__ import annotations

import sqlite3

SCOPES = ("repository", "namespace", "user")
# Where each kind of stored object is linked into repositories.
_LINKS = {"blob": "repository_blobs", "manifest": "manifests"}
_ROBOT_PREFIX = "robot$"


def namespace_of(repository: str) -> str:
    return repository.split("/", 1)[0]


def user_of(c: sqlite3.Connection, subject: str | None) -> str | None:
    """The user whose quota `subject`'s pushes count against: the user
    itself, a robot's owner, or nobody for anonymous pushes."""
    if not subject or subject == "anonymous":
        return None
    if subject.startswith(_ROBOT_PREFIX):
        row = c.execute(
            "SELECT owner FROM robots WHERE name = ?", (subject,)
        ).fetchone()
        return row[0] if row else subject
    return subject


def used(c: sqlite3.Connection, scope: str, name: str) -> int:
    row = c.execute(
        "SELECT bytes FROM usage WHERE scope = ? AND name = ?", (scope, name)
    ).fetchone()
    return row[0] if row else 0


def reserved(c: sqlite3.Connection, scope: str, name: str) -> int:
    if scope == "repository":
        sql, args = "repository = ?", (name,)
    elif scope == "namespace":
        # name/... sorts from name + "/" up to, not including, name + "0".
        sql, args = (
            "(repository = ? OR (repository >= ? AND repository < ?))",
            (name, name + "/", name + "0"),
        )
    else:
        # The user's own sessions and those of the robots it owns.
        sql, args = (
            "(subject = ? OR subject IN (SELECT name FROM robots WHERE owner = ?))",
            (name, name),
        )
    (total,) = c.execute(
        f"SELECT coalesce(sum({RESERVED[scope]}), 0) FROM uploads WHERE {sql}", args
    ).fetchone()
    return total


# The uploads column that holds a session's reservation in each scope.
RESERVED = {
    "repository": "reserved",
    "namespace": "reserved_namespace",
    "user": "reserved_user",
}


def _add(c: sqlite3.Connection, scope: str, name: str, delta: int) -> None:
    c.execute(
        "INSERT INTO usage VALUES (?, ?, ?) ON CONFLICT (scope, name) "
        "DO UPDATE SET bytes = bytes + excluded.bytes",
        (scope, name, delta),
    )


def _in_other_repository_of_namespace(
    c: sqlite3.Connection, kind: str, repository_id: int, namespace: str, digest: str
) -> bool:
    row = c.execute(
        f"SELECT 1 FROM {_LINKS[kind]} x JOIN repositories r ON r.id = x.repository_id "
        "WHERE x.digest = ? AND x.repository_id != ? "
        "AND (r.name = ? OR (r.name >= ? AND r.name < ?)) LIMIT 1",
        (digest, repository_id, namespace, namespace + "/", namespace + "0"),
    ).fetchone()
    return row is not None


def new_bytes(
    c: sqlite3.Connection,
    repository_id: int,
    repository: str,
    digest: str,
    size: int,
    kind: str = "blob",
) -> dict[str, int] | None:
    """What storing `digest` (a blob or a manifest) in the repository would
    add, by scope; None when it is there already."""
    linked = c.execute(
        f"SELECT 1 FROM {_LINKS[kind]} WHERE repository_id = ? AND digest = ?",
        (repository_id, digest),
    ).fetchone()
    if linked:
        return None
    shared = _in_other_repository_of_namespace(
        c, kind, repository_id, namespace_of(repository), digest
    )
    return {"repository": size, "namespace": 0 if shared else size, "user": size}


def wanted(
    c: sqlite3.Connection, repository: str, digest: str | None, extra: int
) -> dict[str, int]:
    """What `extra` more bytes of an upload need reserved, by scope. With
    the blob's `digest` known ahead (a PUT or POST with ?digest=), scopes
    that hold it already need nothing; should the bytes not match it, the
    upload fails anyway."""
    if digest is None:
        return dict.fromkeys(SCOPES, extra)
    row = c.execute(
        "SELECT id FROM repositories WHERE name = ?", (repository,)
    ).fetchone()
    # -1 for a repository with no row yet: nothing is linked there.
    needed = new_bytes(c, row[0] if row else -1, repository, digest, extra)
    return needed or dict.fromkeys(SCOPES, 0)


def on_link(
    c: sqlite3.Connection, repository: str, user: str | None, added: dict[str, int]
) -> None:
    """Count a new link (with `added` from `new_bytes`) for `user` (from
    `user_of`)."""
    _add(c, "repository", repository, added["repository"])
    if added["namespace"]:
        _add(c, "namespace", namespace_of(repository), added["namespace"])
    if user and added["user"]:
        _add(c, "user", user, added["user"])


def on_unlink(
    c: sqlite3.Connection,
    repository_id: int,
    repository: str,
    digest: str,
    size: int,
    pushed_by: str | None,
    kind: str = "blob",
) -> None:
    """Give back a link's bytes (after it was removed)."""
    _add(c, "repository", repository, -size)
    if not _in_other_repository_of_namespace(
        c, kind, repository_id, namespace_of(repository), digest
    ):
        _add(c, "namespace", namespace_of(repository), -size)
    if pushed_by:
        _add(c, "user", pushed_by, -size)


def all_usage(c: sqlite3.Connection) -> list[tuple[str, str, int]]:
    return c.execute(
        "SELECT scope, name, bytes FROM usage ORDER BY scope, name"
    ).fetchall()


def remove_link(
    c: sqlite3.Connection, repository_id: int, repository: str, digest: str
) -> bool:
    """Unlink `digest` from the repository and give its bytes back;
    whether it was linked."""
    row = c.execute(
        "SELECT rb.pushed_by, b.size FROM repository_blobs rb "
        "JOIN blobs b ON b.digest = rb.digest "
        "WHERE rb.repository_id = ? AND rb.digest = ?",
        (repository_id, digest),
    ).fetchone()
    if row is None:
        return False
    c.execute(
        "DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ?",
        (repository_id, digest),
    )
    on_unlink(c, repository_id, repository, digest, row[1], row[0])
    return True


def remove_manifest(
    c: sqlite3.Connection, repository_id: int, repository: str, digest: str
) -> bool:
    """Delete a manifest and its references (not its tags) and give its
    bytes back; whether it was there."""
    row = c.execute(
        "DELETE FROM manifests WHERE repository_id = ? AND digest = ? "
        "RETURNING size, pushed_by",
        (repository_id, digest),
    ).fetchone()
    if row is None:
        return False
    c.execute(
        "DELETE FROM manifest_references WHERE repository_id = ? AND manifest_digest = ?",
        (repository_id, digest),
    )
    on_unlink(c, repository_id, repository, digest, row[0], row[1], "manifest")
    return True


# Upload sessions' staged bytes


def session_changed(
    c: sqlite3.Connection, subject: str, delta: int, in_flight_delta: int = 0
) -> None:
    """Count `delta` more bytes staged (held or reserved) by a session of
    `subject`, `in_flight_delta` of them reserved for a chunk in flight."""
    c.executemany(
        "INSERT INTO staged VALUES (?, ?, ?) ON CONFLICT (subject) DO UPDATE "
        "SET bytes = staged.bytes + excluded.bytes, "
        "in_flight = staged.in_flight + excluded.in_flight",
        [(subject, delta, in_flight_delta), ("", delta, in_flight_delta)],
    )


def staged(c: sqlite3.Connection, subject: str = "") -> tuple[int, int]:
    """(bytes staged, bytes of them in flight) for `subject`'s sessions, or
    for all sessions."""
    row = c.execute(
        "SELECT bytes, in_flight FROM staged WHERE subject = ?", (subject,)
    ).fetchone()
    return (row[0], row[1]) if row else (0, 0)
