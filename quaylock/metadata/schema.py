"""Versioned schema migrations for the metadata store.

Each entry of MIGRATIONS moves the schema from version i to i+1 and is
written in the SQL that SQLite and PostgreSQL share. Migrations only ever
append: a released step is never edited. A store whose version is newer than
the last step here was written by a newer quaylock, and is refused rather
than misread (see `check_version`).

Text keys that clients page through (repository names, tags) must sort by
bytes, as the spec's lexical order requires; SQLite's default BINARY
collation does that.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: repositories, blobs, manifests, tags, upload sessions.
    """
    CREATE TABLE repositories (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL
    );
    CREATE TABLE blobs (
        digest TEXT PRIMARY KEY,
        size BIGINT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE repository_blobs (
        repository_id INTEGER NOT NULL REFERENCES repositories (id),
        digest TEXT NOT NULL REFERENCES blobs (digest),
        created_at REAL NOT NULL,
        PRIMARY KEY (repository_id, digest)
    );
    CREATE INDEX repository_blobs_digest ON repository_blobs (digest);
    CREATE TABLE manifests (
        repository_id INTEGER NOT NULL REFERENCES repositories (id),
        digest TEXT NOT NULL,
        media_type TEXT NOT NULL,
        artifact_type TEXT,
        subject TEXT,
        annotations TEXT,
        size BIGINT NOT NULL,
        content BLOB NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (repository_id, digest)
    );
    CREATE INDEX manifests_subject ON manifests (repository_id, subject);
    CREATE TABLE manifest_references (
        repository_id INTEGER NOT NULL,
        manifest_digest TEXT NOT NULL,
        child_digest TEXT NOT NULL,
        kind TEXT NOT NULL,
        PRIMARY KEY (repository_id, manifest_digest, child_digest)
    );
    CREATE INDEX manifest_references_child
        ON manifest_references (repository_id, child_digest);
    CREATE TABLE tags (
        repository_id INTEGER NOT NULL REFERENCES repositories (id),
        name TEXT NOT NULL,
        digest TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (repository_id, name)
    );
    CREATE INDEX tags_digest ON tags (repository_id, digest);
    CREATE TABLE uploads (
        upload_id TEXT PRIMARY KEY,
        repository TEXT NOT NULL,
        size BIGINT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 2: accounts. Users log in with a password, robots with a secret; both
    # are stored as salted hashes only. A robot's grants are its own (JSON:
    # [{"repositories": [...], "actions": [...]}]), never wider than its
    # owner's.
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE user_groups (
        user_name TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
        group_name TEXT NOT NULL,
        PRIMARY KEY (user_name, group_name)
    );
    CREATE TABLE robots (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        grants TEXT NOT NULL,
        expires_at REAL,
        revoked_at REAL,
        created_at REAL NOT NULL
    );
    """,
    # 3: the audit log. Each record carries the hash of the one before it,
    # so an edited, deleted or reordered record breaks the chain (see
    # metadata/audit.py).
    """
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        client TEXT,
        user_agent TEXT,
        repository TEXT,
        tag TEXT,
        old_digest TEXT,
        new_digest TEXT,
        detail TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_log_tag ON audit_log (repository, tag, seq);
    """,
    # 4: what admins change at run time: tag rules beyond the configuration
    # file, names allowed although they look like others, and look-alike
    # names held for a decision. Ids are never reused, so "tag rule 3" or
    # "hold 7" in an old message or audit record names one thing for good.
    # policy_version grows with every change, so each process reloads its
    # copy when it sees a new number.
    """
    CREATE TABLE tag_rules (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        rule TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE allowed_names (
        kind TEXT NOT NULL,
        repository TEXT NOT NULL,
        name TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (kind, repository, name)
    );
    CREATE TABLE holds (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        repository TEXT NOT NULL,
        name TEXT NOT NULL,
        digest TEXT,
        reason TEXT NOT NULL,
        subject TEXT NOT NULL,
        client TEXT,
        created_at REAL NOT NULL,
        state TEXT NOT NULL,
        decided_by TEXT,
        decided_at REAL
    );
    CREATE INDEX holds_pending ON holds (state, kind, repository, name);
    CREATE TABLE policy_version (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version BIGINT NOT NULL
    );
    INSERT INTO policy_version VALUES (1, 0);
    """,
    # 5: an upload session belongs to the subject that opened it, from one
    # client address; both are counted against the session limits.
    """
    ALTER TABLE uploads ADD COLUMN subject TEXT NOT NULL DEFAULT 'anonymous';
    ALTER TABLE uploads ADD COLUMN client TEXT NOT NULL DEFAULT '';
    CREATE INDEX uploads_subject ON uploads (subject);
    CREATE INDEX uploads_client ON uploads (client);
    CREATE INDEX uploads_updated ON uploads (updated_at);
    """,
    # 6: quotas. usage holds the stored bytes of each repository, namespace
    # and user (scope, name), kept in the transaction that links or unlinks
    # a blob; a blob counts once per repository and once per namespace, and
    # for the user whose push or mount linked it. An upload session's
    # reserved bytes (for its repository, namespace and user apart: a blob
    # a scope holds already needs nothing there) count against the same
    # quotas while it streams.
    """
    CREATE TABLE usage (
        scope TEXT NOT NULL,
        name TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        PRIMARY KEY (scope, name)
    );
    ALTER TABLE repository_blobs ADD COLUMN pushed_by TEXT;
    ALTER TABLE uploads ADD COLUMN reserved BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE uploads ADD COLUMN reserved_namespace BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE uploads ADD COLUMN reserved_user BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX uploads_repository ON uploads (repository);
    """,
    # 7: manifests count against quotas like blobs (once per repository and
    # namespace, and for the user who pushed them), and an upload session
    # reserves staging space for the chunk streaming into it (`staging`).
    # `staged` holds, per session subject and for all sessions (subject
    # ''), the bytes that sessions hold on disk or have reserved, and the
    # part of those still in flight; every write that changes a session
    # keeps it (`metadata.store`). Stored manifests are counted in Python
    # (`_count_manifests`): no string function that finds a namespace is
    # common to SQLite and PostgreSQL.
    """
    ALTER TABLE manifests ADD COLUMN pushed_by TEXT;
    ALTER TABLE uploads ADD COLUMN staging BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE staged (
        subject TEXT PRIMARY KEY,
        bytes BIGINT NOT NULL,
        in_flight BIGINT NOT NULL
    );
    INSERT INTO staged SELECT '', coalesce(sum(size), 0), 0 FROM uploads;
    INSERT INTO staged SELECT subject, sum(size), 0 FROM uploads GROUP BY subject
    """,
    # 8: manifests stored before 7 have no pusher, so no user's quota
    # counted them. The audit log names who pushed each: Python
    # (`_credit_pushers`) gives them to that user (a robot's owner).
    "",
]


def _count_manifests(c) -> None:
    """Migration 7's second half: stored manifests' bytes into `usage`."""
    by_namespace: dict[str, dict[str, int]] = {}
    by_repository: dict[str, int] = {}
    for name, digest, size in c.execute(
        "SELECT r.name, m.digest, m.size FROM manifests m "
        "JOIN repositories r ON r.id = m.repository_id"
    ).fetchall():
        by_repository[name] = by_repository.get(name, 0) + size
        by_namespace.setdefault(name.split("/", 1)[0], {})[digest] = size
    rows = [("repository", name, n) for name, n in by_repository.items()] + [
        ("namespace", name, sum(sizes.values())) for name, sizes in by_namespace.items()
    ]
    c.executemany(
        "INSERT INTO usage VALUES (?, ?, ?) ON CONFLICT (scope, name) "
        "DO UPDATE SET bytes = usage.bytes + excluded.bytes",
        rows,
    )


def _credit_pushers(c) -> None:
    """Migration 8: each manifest without a pusher goes to the subject of
    the first audit record that pushed or tagged it there, and its bytes to
    that user's quota (a robot's to its owner; anonymous pushes to nobody)."""
    owners = dict(c.execute("SELECT name, owner FROM robots").fetchall())
    unclaimed = c.execute(
        "SELECT m.repository_id, r.name, m.digest, m.size FROM manifests m "
        "JOIN repositories r ON r.id = m.repository_id WHERE m.pushed_by IS NULL"
    ).fetchall()
    credit: dict[str, int] = {}
    for repository_id, repository, digest, size in unclaimed:
        row = c.execute(
            "SELECT subject FROM audit_log WHERE repository = ? AND new_digest = ? "
            "AND action IN ('push', 'tag.create', 'tag.move') ORDER BY seq LIMIT 1",
            (repository, digest),
        ).fetchone()
        if row is None or row[0] in ("", "anonymous"):
            continue
        user = owners.get(row[0], row[0])
        c.execute(
            "UPDATE manifests SET pushed_by = ? WHERE repository_id = ? AND digest = ?",
            (user, repository_id, digest),
        )
        credit[user] = credit.get(user, 0) + size
    c.executemany(
        "INSERT INTO usage VALUES ('user', ?, ?) ON CONFLICT (scope, name) "
        "DO UPDATE SET bytes = usage.bytes + excluded.bytes",
        list(credit.items()),
    )


# Python that runs after a step's SQL, by the version the step reaches.
AFTER = {7: _count_manifests, 8: _credit_pushers}

SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    """A metadata store this quaylock must not open: said in one line."""


class SchemaTooNew(StoreError):
    """The store was migrated by a newer quaylock than this one."""


def check_version(found: int) -> None:
    """Refuse a store whose schema is newer than this code knows, or below
    any version.

    Raises:
        SchemaTooNew: `found` is above SCHEMA_VERSION.
        StoreError: `found` is negative.
    """
    if found < 0:
        raise StoreError(
            f"the metadata store's schema_version holds {found!r}, not a version: "
            "restore it from a backup"
        )
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"metadata schema is version {found}, but this quaylock knows "
            f"only up to {SCHEMA_VERSION}: upgrade quaylock before starting it"
        )
