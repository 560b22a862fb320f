"""Stored bytes per repository, namespace and user, for quotas.

The `usage` table is kept in the transaction that links or unlinks a blob:
a blob counts once per repository, once per namespace however many of its
repositories hold it, and for the user whose push or mount linked it into a
repository. Upload sessions reserve bytes as they stream (`uploads.reserved`);
reserved bytes count against the same quotas, so parallel uploads cannot
together pass one.

A namespace is a repository name's first part (``team`` for ``team/app``;
``alpine`` for ``alpine``).
"""

from __future__ import annotations

import sqlite3

SCOPES = ("repository", "namespace", "user")


def namespace_of(repository: str) -> str:
    return repository.split("/", 1)[0]


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
        sql, args = "subject = ?", (name,)
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
    c: sqlite3.Connection, repository_id: int, namespace: str, digest: str
) -> bool:
    row = c.execute(
        "SELECT 1 FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id "
        "WHERE rb.digest = ? AND rb.repository_id != ? "
        "AND (r.name = ? OR (r.name >= ? AND r.name < ?)) LIMIT 1",
        (digest, repository_id, namespace, namespace + "/", namespace + "0"),
    ).fetchone()
    return row is not None


def new_bytes(
    c: sqlite3.Connection, repository_id: int, repository: str, digest: str, size: int
) -> dict[str, int] | None:
    """What linking `digest` into the repository would add, by scope; None
    when it is linked there already."""
    linked = c.execute(
        "SELECT 1 FROM repository_blobs WHERE repository_id = ? AND digest = ?",
        (repository_id, digest),
    ).fetchone()
    if linked:
        return None
    shared = _in_other_repository_of_namespace(
        c, repository_id, namespace_of(repository), digest
    )
    return {"repository": size, "namespace": 0 if shared else size, "user": size}


def on_link(
    c: sqlite3.Connection, repository: str, subject: str | None, added: dict[str, int]
) -> None:
    """Count a new link (with `added` from `new_bytes`)."""
    _add(c, "repository", repository, added["repository"])
    if added["namespace"]:
        _add(c, "namespace", namespace_of(repository), added["namespace"])
    if subject and added["user"]:
        _add(c, "user", subject, added["user"])


def on_unlink(
    c: sqlite3.Connection,
    repository_id: int,
    repository: str,
    digest: str,
    size: int,
    pushed_by: str | None,
) -> None:
    """Give back a link's bytes (after it was removed)."""
    _add(c, "repository", repository, -size)
    if not _in_other_repository_of_namespace(
        c, repository_id, namespace_of(repository), digest
    ):
        _add(c, "namespace", namespace_of(repository), -size)
    if pushed_by:
        _add(c, "user", pushed_by, -size)


def all_usage(c: sqlite3.Connection) -> list[tuple[str, str, int]]:
    return c.execute(
        "SELECT scope, name, bytes FROM usage WHERE bytes != 0 ORDER BY scope, name"
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
