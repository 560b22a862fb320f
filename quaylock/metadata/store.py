"""The metadata store: repositories, manifests, tags, blob links, uploads.

SQLite (one file, WAL) is the embedded default. Reads are short indexed
lookups and run on the event loop's thread with their own connection: a
hop to a worker thread would cost more than the query. Writes run on one
writer thread per process (`metadata.writer`), grouped into ``BEGIN
IMMEDIATE`` transactions, so a write waiting on the file lock or an fsync
never stalls the loop. Manifest, tag and delete commits are durable
(``synchronous=FULL``): a client told 201 keeps its tag after a power cut.

Invariants the writes keep:

- a manifest row exists only if every blob and child manifest it names is
  visible in the same repository (checked inside the writing transaction);
- a tag always points at a manifest row of its repository;
- a repository row exists once anything was pushed to it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from quaylock.errors import (
    BlobUploadUnknown,
    InUse,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
)
from quaylock.metadata import schema, usage
from quaylock.metadata.writer import GroupWriter

T = TypeVar("T")


@dataclass(slots=True)
class ManifestRecord:
    digest: str
    media_type: str
    content: bytes
    artifact_type: str | None = None
    subject: str | None = None
    annotations: dict | None = None

    @property
    def size(self) -> int:
        return len(self.content)


@dataclass(frozen=True, slots=True)
class ReservingSession:
    """An upload session as `reserve_upload` reads it for its check."""

    repository: str
    subject: str
    # Bytes it holds on disk or has reserved for a chunk in flight.
    staged: int
    # What it has reserved against the quotas, by scope.
    reserved: dict[str, int]


@dataclass(slots=True)
class UploadRecord:
    upload_id: str
    repository: str
    size: int
    created_at: float
    updated_at: float
    # Who opened the session, and from where (see services.uploads).
    subject: str = "anonymous"
    client: str = ""


@dataclass(slots=True)
class Reference:
    """A blob or child manifest that a manifest names."""

    digest: str
    kind: str  # "blob" or "manifest"
    size: int


class SQLiteStore:
    """Metadata in one SQLite file.

    Args:
        path: the database file; created, with its schema, when missing.
    """

    def __init__(self, path: str):
        self.path = path
        self._reader = self._connect()
        self._lock = threading.Lock()
        self._migrate()
        self._writer = GroupWriter(self._connect)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _migrate(self) -> None:
        conn = self._reader
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
                )
                version = _one_version(conn, self.path)
                for reached, step in enumerate(schema.MIGRATIONS, 1):
                    if reached <= version:
                        continue
                    for statement in step.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    if reached in schema.AFTER:
                        schema.AFTER[reached](conn)
                conn.execute("DELETE FROM schema_version")
                conn.execute(
                    "INSERT INTO schema_version VALUES (?)",
                    (max(version, schema.SCHEMA_VERSION),),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if version < schema.SCHEMA_VERSION:
            from quaylock import log  # noqa: PLC0415 - once per start

            # A migration cannot be undone but by a backup: say it happened.
            log.event(
                log.logger, 20 if version == 0 else 30,
                "metadata store created" if version == 0 else "metadata schema migrated",
                path=self.path, schema_from=version, schema_to=schema.SCHEMA_VERSION,
            )  # fmt: skip

    def schema_version(self) -> int:
        return self._reader.execute("SELECT version FROM schema_version").fetchone()[0]

    def close(self) -> None:
        self._writer.close()
        self._reader.close()

    async def _write(
        self, fn: Callable[[sqlite3.Connection], T], durable: bool = True
    ) -> T:
        return await self._writer.submit(fn, durable)

    # Generic access, for the other metadata modules (accounts, later audit).

    def data_version(self) -> int:
        """A number that changes whenever another connection (another
        process, or this process's writer) commits: a cheap test of whether
        anything cached from the database may be stale."""
        return self._reader.execute("PRAGMA data_version").fetchone()[0]

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the read connection (on the event loop:
        keep it to indexed lookups)."""
        return fn(self._reader)

    def read_one(self, sql: str, args: tuple = ()) -> tuple | None:
        return self._reader.execute(sql, args).fetchone()

    def read_all(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._reader.execute(sql, args).fetchall()

    async def write(
        self, fn: Callable[[sqlite3.Connection], T], durable: bool = True
    ) -> T:
        """Run `fn(connection)` in a write transaction (see `metadata.writer`)."""
        return await self._writer.submit(fn, durable)

    # Reads

    def _one(self, sql: str, args: tuple):
        return self._reader.execute(sql, args).fetchone()

    async def repository_exists(self, repository: str) -> bool:
        row = self._one("SELECT 1 FROM repositories WHERE name = ?", (repository,))
        return row is not None

    async def get_manifest(
        self, repository: str, reference: str
    ) -> ManifestRecord | None:
        """Return the manifest for a tag or digest, or None."""
        if ":" in reference:
            row = self._one(
                "SELECT m.digest, m.media_type, m.content FROM manifests m "
                "JOIN repositories r ON r.id = m.repository_id "
                "WHERE r.name = ? AND m.digest = ?",
                (repository, reference),
            )
        else:
            row = self._one(
                "SELECT m.digest, m.media_type, m.content FROM tags t "
                "JOIN repositories r ON r.id = t.repository_id "
                "JOIN manifests m ON m.repository_id = t.repository_id "
                "AND m.digest = t.digest WHERE r.name = ? AND t.name = ?",
                (repository, reference),
            )
        if row is None:
            return None
        return ManifestRecord(row[0], row[1], bytes(row[2]))

    async def repository_blob_size(self, repository: str, digest: str) -> int | None:
        """Return the size of a blob visible in `repository`, or None."""
        row = self._one(
            "SELECT b.size FROM repository_blobs rb "
            "JOIN repositories r ON r.id = rb.repository_id "
            "JOIN blobs b ON b.digest = rb.digest WHERE r.name = ? AND rb.digest = ?",
            (repository, digest),
        )
        return None if row is None else row[0]

    async def linked_blob_size(self, digest: str) -> int | None:
        """Return the size of a blob some repository still links, or None."""
        row = self._one(
            "SELECT b.size FROM blobs b WHERE b.digest = ? AND EXISTS "
            "(SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest)",
            (digest,),
        )
        return None if row is None else row[0]

    async def repositories_with_blob(self, digest: str, limit: int) -> list[str]:
        rows = self._reader.execute(
            "SELECT r.name FROM repository_blobs rb JOIN repositories r "
            "ON r.id = rb.repository_id WHERE rb.digest = ? ORDER BY r.name LIMIT ?",
            (digest, limit),
        )
        return [name for (name,) in rows]

    def recent_tags(
        self,
        c: sqlite3.Connection | None,
        repository: str,
        limit: int,
        since: float = 0.0,
    ) -> list[tuple[str, float]]:
        """The `limit` tags of `repository` that moved last, at `since` or
        later, with when they moved (for the look-alike guard): `latest`
        and the newest releases first."""
        conn = c or self._reader
        rows = conn.execute(
            "SELECT t.name, t.updated_at FROM tags t "
            "JOIN repositories r ON r.id = t.repository_id "
            "WHERE r.name = ? AND t.updated_at >= ? "
            "ORDER BY t.updated_at DESC LIMIT ?",
            (repository, since, limit),
        )
        return rows.fetchall()

    def existing_tags(
        self, c: sqlite3.Connection | None, repository: str, names: list[str]
    ) -> list[str]:
        """Which of `names` are tags of `repository` (by the primary key,
        whatever else the repository holds)."""
        conn = c or self._reader
        found = []
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            found += [
                name
                for (name,) in conn.execute(
                    "SELECT t.name FROM tags t JOIN repositories r ON r.id = "
                    f"t.repository_id WHERE r.name = ? AND t.name IN ({marks})",
                    (repository, *chunk),
                )
            ]
        return found

    def oldest_repositories(self, limit: int, after: int = 0) -> list[tuple[int, str]]:
        """Ids and names of the `limit` repositories created first, after
        the one numbered `after` (for the look-alike guard: the established
        names a new one would imitate)."""
        rows = self._reader.execute(
            "SELECT id, name FROM repositories WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        )
        return rows.fetchall()

    async def list_tags(
        self, repository: str, limit: int, last: str | None
    ) -> list[str]:
        rows = self._reader.execute(
            "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id "
            "WHERE r.name = ? AND t.name > ? ORDER BY t.name LIMIT ?",
            (repository, last or "", limit),
        )
        return [row[0] for row in rows]

    async def list_repositories(self, limit: int, last: str | None) -> list[str]:
        rows = self._reader.execute(
            "SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?",
            (last or "", limit),
        )
        return [row[0] for row in rows]

    async def list_referrers(
        self,
        repository: str,
        subject: str,
        artifact_type: str | None,
        after: str | None,
        limit: int,
    ) -> list[tuple[str, str, int, str | None, str | None]]:
        """Return (digest, media type, size, artifact type, annotations as
        JSON text) of manifests whose subject is `subject`, by digest, after
        `after`."""
        sql = (
            "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations "
            "FROM manifests m JOIN repositories r ON r.id = m.repository_id "
            "WHERE r.name = ? AND m.subject = ? AND m.digest > ?"
        )
        args: tuple = (repository, subject, after or "")
        if artifact_type is not None:
            sql += " AND m.artifact_type = ?"
            args += (artifact_type,)
        return self._reader.execute(
            sql + " ORDER BY m.digest LIMIT ?", (*args, limit)
        ).fetchall()

    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        row = self._one(
            "SELECT upload_id, repository, size, created_at, updated_at, subject, "
            "client FROM uploads WHERE upload_id = ?",
            (upload_id,),
        )
        return None if row is None else UploadRecord(*row)

    def staged_bytes(self, subject: str | None = None) -> int:
        """Bytes upload sessions hold on disk or have reserved: all of them,
        or `subject`'s."""
        return usage.staged(self._reader, subject or "")[0]

    def in_flight_bytes(self) -> int:
        """Bytes reserved for chunks streaming in now, not all written yet."""
        return usage.staged(self._reader)[1]

    def expired_uploads(self, before: float, limit: int, after: str = "") -> list[str]:
        """Sessions idle since `before`, by id, from past `after` on."""
        return [
            upload_id
            for (upload_id,) in self._reader.execute(
                "SELECT upload_id FROM uploads WHERE updated_at < ? AND upload_id > ? "
                "ORDER BY upload_id LIMIT ?",
                (before, after, limit),
            )
        ]

    # Writes

    async def create_upload(
        self,
        upload_id: str,
        repository: str,
        subject: str,
        client: str,
        live_since: float = 0.0,
        check: Callable[[int, int], None] | None = None,
    ) -> None:
        """Insert a session; `check(sessions of subject, sessions of client)`
        (those touched since `live_since`, or with a chunk streaming in)
        runs first in the same transaction and may refuse."""
        now = time.time()

        def write(c: sqlite3.Connection) -> None:
            if check is not None:
                # Live: touched lately, or a chunk is streaming in now.
                (by_subject,) = c.execute(
                    "SELECT count(*) FROM uploads WHERE subject = ? "
                    "AND (updated_at >= ? OR staging > 0)",
                    (subject, live_since),
                ).fetchone()
                (by_client,) = c.execute(
                    "SELECT count(*) FROM uploads WHERE client = ? "
                    "AND (updated_at >= ? OR staging > 0)",
                    (client, live_since),
                ).fetchone()
                check(by_subject, by_client)
            c.execute(
                "INSERT INTO uploads (upload_id, repository, size, created_at, "
                "updated_at, subject, client) VALUES (?, ?, 0, ?, ?, ?, ?)",
                (upload_id, repository, now, now, subject, client),
            )

        await self._write(write, durable=False)

    async def delete_expired_upload(self, upload_id: str, before: float) -> bool:
        """Delete the session if it is still idle since `before`; whether
        this call deleted it (several workers may purge at once)."""
        return await self._write(
            lambda c: _end_upload(c, upload_id, "AND updated_at < ?", (before,)),
            durable=False,
        )

    async def set_upload_size(
        self, upload_id: str, size: int, unless_moved_from: int | None = None
    ) -> None:
        """Settle a session after a chunk: it holds `size` committed bytes,
        reserves as much against the quotas, and has nothing in flight (a
        chunk that failed gives back what it reserved). With
        `unless_moved_from`, only while its committed size is still that
        (a late settle must not undo a chunk committed since)."""
        now = time.time()

        def write(c: sqlite3.Connection) -> None:
            row = c.execute(
                "SELECT subject, size, staging FROM uploads WHERE upload_id = ?",
                (upload_id,),
            ).fetchone()
            if row is None or unless_moved_from not in (None, row[1]):
                return
            c.execute(
                "UPDATE uploads SET size = ?1, staging = 0, reserved = ?1, "
                "reserved_namespace = ?1, reserved_user = ?1, updated_at = ?2 "
                "WHERE upload_id = ?3",
                (size, now, upload_id),
            )
            usage.session_changed(c, row[0], size - row[1] - row[2], -row[2])

        await self._write(write, durable=False)

    async def delete_upload(self, upload_id: str) -> None:
        await self._write(lambda c: _end_upload(c, upload_id), durable=False)

    async def link_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        upload_id: str | None = None,
        subject: str | None = None,
        check: Callable | None = None,
        require_linked: bool = False,
    ) -> bool:
        """Record blob `digest` and make it visible in `repository`, counting
        its bytes for the repository, its namespace and `subject`
        (`metadata.usage`). `check(connection, repository, subject, bytes
        by scope)` runs first and may refuse (a quota). With `upload_id`,
        the finished session goes, and its reservation with it; `check`
        then sees only what that reservation did not cover. With
        `require_linked` (a mount), only a blob that some repository still
        links is linked, so garbage collection never loses one to a mount;
        returns whether it was."""

        def write(c: sqlite3.Connection) -> bool:
            now = time.time()
            if (
                require_linked
                and not c.execute(
                    "SELECT 1 FROM repository_blobs WHERE digest = ? LIMIT 1", (digest,)
                ).fetchone()
            ):
                return False
            repository_id = _ensure_repository(c, repository, now)
            added = usage.new_bytes(c, repository_id, repository, digest, size)
            if check is not None and added is not None:
                own = _reserved_by(c, upload_id) if upload_id is not None else {}
                beyond = {s: max(0, added[s] - own.get(s, 0)) for s in usage.SCOPES}
                if any(beyond.values()):
                    check(c, repository, subject, beyond, own)
            c.execute(
                "INSERT INTO blobs VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (digest, size, now),
            )
            if added is not None:
                user = usage.user_of(c, subject)
                c.execute(
                    "INSERT INTO repository_blobs (repository_id, digest, created_at, "
                    "pushed_by) VALUES (?, ?, ?, ?)",
                    (repository_id, digest, now, user),
                )
                usage.on_link(c, repository, user, added)
            else:
                # Pushed or mounted again: as new to garbage collection's
                # grace period as a first push.
                c.execute(
                    "UPDATE repository_blobs SET created_at = ? "
                    "WHERE repository_id = ? AND digest = ?",
                    (now, repository_id, digest),
                )
            if upload_id is not None:
                _end_upload(c, upload_id)
            return True

        # Not fsynced on its own: the blob file already is, and the manifest
        # commit that makes the blob matter flushes this row with it.
        return await self._write(write, durable=False)

    async def unlink_blob(self, repository: str, digest: str) -> bool:
        """Hide a blob from `repository`; return whether it was visible. Its
        bytes are given back to the quotas that counted them."""

        def write(c: sqlite3.Connection) -> bool:
            repository_id = _repository_id(c, repository)
            _refuse_if_referenced(c, repository_id, digest, "blob")
            return usage.remove_link(c, repository_id, repository, digest)

        return await self._write(write)

    async def reserve_upload(self, upload_id: str, extra: int, check: Callable) -> None:
        """Reserve `extra` more bytes for the chunk streaming into a session.
        `check(connection, session, extra)` runs first in the same
        transaction, with the session as a `ReservingSession`: it may refuse
        (a staging cap, the disk floor, a quota), and returns what to
        reserve against the quotas by scope.

        Raises:
            BlobUploadUnknown: the session is gone (expired and purged).
        """

        def write(c: sqlite3.Connection) -> None:
            session = _reserving_session(c, upload_id)
            wanted = check(c, session, extra)
            # Reserve in each scope what the check approved there, no more:
            # a session must not hold bytes against a scope that needs none.
            c.execute(
                "UPDATE uploads SET staging = staging + ?, reserved = reserved + ?, "
                "reserved_namespace = reserved_namespace + ?, "
                "reserved_user = reserved_user + ?, updated_at = ? WHERE upload_id = ?",
                (
                    extra, wanted["repository"], wanted["namespace"],
                    wanted["user"], time.time(), upload_id,
                ),
            )  # fmt: skip
            usage.session_changed(c, session.subject, extra, extra)

        await self._write(write, durable=False)

    def precheck_upload(self, upload_id: str, extra: int, check: Callable) -> None:
        """Run `reserve_upload`'s check for `extra` bytes on what is
        committed now, reserving nothing: a chunk that could not fit now is
        refused before any byte is read, and one that may fit holds only
        what arrives (`reserve_upload` as it streams)."""
        self.read(lambda c: check(c, _reserving_session(c, upload_id), extra))

    def quota_usage(self) -> list[tuple[str, str, int]]:
        return usage.all_usage(self._reader)

    async def put_manifest(
        self,
        repository: str,
        manifest: ManifestRecord,
        references: list[Reference],
        tag: str | None,
        hook: Callable[[sqlite3.Connection, str | None], None] | None = None,
        subject: str | None = None,
        check: Callable | None = None,
    ) -> None:
        """Store a manifest and point `tag` at it, all or nothing.

        A manifest new to the repository counts against the quotas for
        `subject`'s user (`metadata.usage`): `check(connection, repository,
        subject, bytes by scope)` runs first and may refuse.

        `hook(connection, digest the tag pointed at or None)` runs inside the
        transaction before the tag moves: it may refuse (raise) and it may
        write (the audit record), so check and move are one atomic step. A
        hook that returns False keeps the manifest but leaves the tag alone
        (a look-alike tag held for an admin).

        Raises:
            ManifestBlobUnknown: a reference is not visible in the repository.
        """

        def write(c: sqlite3.Connection) -> None:
            now = time.time()
            repository_id = _ensure_repository(c, repository, now)
            missing = []
            for reference in references:
                size = _visible_size(c, repository_id, reference)
                if size is None:
                    missing.append(reference.digest)
                elif size != reference.size:
                    raise ManifestInvalid(
                        f"descriptor of {reference.digest} says size "
                        f"{reference.size}, but the stored content is {size} bytes"
                    )
            if missing:
                raise ManifestBlobUnknown(
                    f"manifest references {len(missing)} blob(s) or manifest(s) "
                    f"not in repository {repository}: {', '.join(missing[:5])}",
                    detail={"digests": missing[:100]},
                )
            annotations = (
                json.dumps(manifest.annotations, separators=(",", ":"))
                if manifest.annotations
                else None
            )
            added = usage.new_bytes(
                c, repository_id, repository, manifest.digest, manifest.size,
                "manifest",
            )  # fmt: skip
            if added is not None:
                if check is not None:
                    check(c, repository, subject, added)
                user = usage.user_of(c, subject)
                c.execute(
                    "INSERT INTO manifests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        repository_id,
                        manifest.digest,
                        manifest.media_type,
                        manifest.artifact_type,
                        manifest.subject,
                        annotations,
                        manifest.size,
                        manifest.content,
                        now,
                        user,
                    ),
                )
                usage.on_link(c, repository, user, added)
            c.executemany(
                "INSERT INTO manifest_references VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [
                    (repository_id, manifest.digest, r.digest, r.kind)
                    for r in references
                ],
            )
            old = None
            if tag is not None:
                row = c.execute(
                    "SELECT digest FROM tags WHERE repository_id = ? AND name = ?",
                    (repository_id, tag),
                ).fetchone()
                old = row[0] if row else None
            if hook is not None and hook(c, old) is False:
                return
            if tag is not None and old != manifest.digest:
                c.execute(
                    "INSERT INTO tags VALUES (?, ?, ?, ?) ON CONFLICT (repository_id, name) "
                    "DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
                    (repository_id, tag, manifest.digest, now),
                )

        await self._write(write)

    async def delete_manifest(
        self,
        repository: str,
        digest: str,
        hook: Callable[[sqlite3.Connection, list[str]], None] | None = None,
    ) -> list[str]:
        """Delete a manifest and every tag pointing at it; return those tags.

        `hook(connection, tags)` runs in the transaction and may refuse.

        Raises:
            ManifestUnknown: no such manifest in the repository.
        """

        def write(c: sqlite3.Connection) -> list[str]:
            repository_id = _repository_id(c, repository)
            _refuse_if_referenced(c, repository_id, digest, "manifest")
            if not usage.remove_manifest(c, repository_id, repository, digest):
                raise ManifestUnknown(f"manifest {digest} is not in {repository}")
            tags = [
                row[0]
                for row in c.execute(
                    "DELETE FROM tags WHERE repository_id = ? AND digest = ? RETURNING name",
                    (repository_id, digest),
                )
            ]
            if hook is not None:
                hook(c, tags)
            return tags

        return await self._write(write)

    async def delete_tag(
        self,
        repository: str,
        tag: str,
        hook: Callable[[sqlite3.Connection, str], None] | None = None,
    ) -> str:
        """Delete a tag; return the digest it pointed at.

        `hook(connection, digest)` runs in the transaction and may refuse.

        Raises:
            ManifestUnknown: no such tag in the repository.
        """

        def write(c: sqlite3.Connection) -> str:
            row = c.execute(
                "DELETE FROM tags WHERE name = ? AND repository_id = "
                "(SELECT id FROM repositories WHERE name = ?) RETURNING digest",
                (tag, repository),
            ).fetchone()
            if row is None:
                raise ManifestUnknown(f"tag {tag} is not in {repository}")
            if hook is not None:
                hook(c, row[0])
            return row[0]

        return await self._write(write)


def _reserving_session(c: sqlite3.Connection, upload_id: str) -> ReservingSession:
    """Raises:
    BlobUploadUnknown: the session is gone (expired and purged)."""
    row = c.execute(
        "SELECT repository, subject, size + staging, reserved, "
        "reserved_namespace, reserved_user FROM uploads WHERE upload_id = ?",
        (upload_id,),
    ).fetchone()
    if row is None:
        raise BlobUploadUnknown(f"upload {upload_id} is not open")
    return ReservingSession(
        row[0], row[1], row[2], dict(zip(usage.SCOPES, row[3:], strict=True))
    )


def _reserved_by(c: sqlite3.Connection, upload_id: str) -> dict[str, int]:
    """What a session has reserved against the quotas, by scope."""
    row = c.execute(
        "SELECT reserved, reserved_namespace, reserved_user FROM uploads "
        "WHERE upload_id = ?",
        (upload_id,),
    ).fetchone()
    return dict(zip(usage.SCOPES, row, strict=True)) if row else {}


def _end_upload(
    c: sqlite3.Connection, upload_id: str, condition: str = "", args: tuple = ()
) -> bool:
    """Delete a session (if `condition` holds) and what it staged from the
    counts; whether it was deleted."""
    row = c.execute(
        f"DELETE FROM uploads WHERE upload_id = ? {condition} "
        "RETURNING subject, size, staging",
        (upload_id, *args),
    ).fetchone()
    if row is None:
        return False
    usage.session_changed(c, row[0], -row[1] - row[2], -row[2])
    return True


def _ensure_repository(c: sqlite3.Connection, name: str, now: float) -> int:
    row = c.execute("SELECT id FROM repositories WHERE name = ?", (name,)).fetchone()
    if row is not None:
        return row[0]
    return c.execute(
        "INSERT INTO repositories (name, created_at) VALUES (?, ?) RETURNING id",
        (name, now),
    ).fetchone()[0]


def _repository_id(c: sqlite3.Connection, name: str) -> int | None:
    row = c.execute("SELECT id FROM repositories WHERE name = ?", (name,)).fetchone()
    return None if row is None else row[0]


def _refuse_if_referenced(
    c: sqlite3.Connection, repository_id: int | None, digest: str, kind: str
) -> None:
    """Keep the invariant that a manifest's content stays visible: refuse to
    delete a blob or child manifest that a manifest here still names."""
    row = c.execute(
        "SELECT manifest_digest FROM manifest_references WHERE repository_id = ? "
        "AND child_digest = ? AND kind = ? LIMIT 1",
        (repository_id, digest, kind),
    ).fetchone()
    if row is not None:
        raise InUse(
            f"{kind} {digest} is still referenced by manifest {row[0]}; "
            "delete that manifest first"
        )


def _visible_size(
    c: sqlite3.Connection, repository_id: int, reference: Reference
) -> int | None:
    if reference.kind == "manifest":
        sql = "SELECT size FROM manifests WHERE repository_id = ? AND digest = ?"
    else:
        sql = (
            "SELECT b.size FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest "
            "WHERE rb.repository_id = ? AND rb.digest = ?"
        )
    row = c.execute(sql, (repository_id, reference.digest)).fetchone()
    return None if row is None else row[0]


def stored_schema_version(url: str) -> int | None:
    """The schema version of the store at `url`, read without migrating it;
    None when there is no store yet.

    Raises:
        ValueError: the URL names an engine this build does not support.
    """
    if not url.startswith("sqlite:///"):
        raise ValueError(f"unsupported metadata url {url!r}: use sqlite:///PATH")
    path = url[len("sqlite:///") :]
    if not os.path.exists(path):
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("SELECT 1 FROM schema_version LIMIT 0")
    except sqlite3.OperationalError:
        conn.close()
        return 0  # a store from before versions were kept
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise schema.StoreError(f"{path} is not a metadata store: {exc}") from None
    try:
        return _one_version(conn, path, check=False)
    finally:
        conn.close()


def _one_version(conn: sqlite3.Connection, path: str, check: bool = True):
    """The schema version a store records: exactly one row of an integer.

    Raises:
        StoreError: the file is no SQLite database, or the record is not
            one version.
        SchemaTooNew: with `check`, a version newer than this code knows.
    """
    try:
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
    except sqlite3.DatabaseError as exc:
        raise schema.StoreError(f"{path} is not a metadata store: {exc}") from None
    if len(rows) > 1:
        raise schema.StoreError(
            f"{path} records {len(rows)} schema versions, not one: restore it from "
            "a backup"
        )
    version = rows[0][0] if rows else 0
    if not isinstance(version, int) or isinstance(version, bool):
        raise schema.StoreError(
            f"the metadata store's schema_version holds {version!r}, not a version: "
            "restore it from a backup"
        )
    if check:
        schema.check_version(version)
    return version


def open_store(url: str) -> SQLiteStore:
    """Open the metadata store named by `url` (``sqlite:///PATH``).

    Raises:
        ValueError: the URL names an engine this build does not support.
    """
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        try:
            return SQLiteStore(path)
        except sqlite3.DatabaseError as exc:
            raise schema.StoreError(f"{path} is not a metadata store: {exc}") from None
    raise ValueError(f"unsupported metadata url {url!r}: use sqlite:///PATH")
