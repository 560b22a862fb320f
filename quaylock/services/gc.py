"""Garbage collection that is safe while the registry serves traffic.

First, retention rules (`gc.retention`) delete the tags that each rule
does not keep, one per transaction, through the tag rules: a tag that they
make immutable or protected stays, and so does one that moved since it was
listed. Each deletion is in the audit log, as the subject ``gc``.

Then three sweeps, each deleting one thing per transaction and re-checking,
in that transaction, why it may go:

1. untagged manifests that no other manifest of the repository lists and
   that refer to no manifest still there (signatures and SBOMs of a live
   image stay), pushed before the grace period;
2. blob links that no manifest of the repository references, made before
   the grace period (their bytes go back to the quotas);
3. blobs that no repository links any more, stored before the grace
   period: the file is moved aside, kept if it changed within the grace
   period (an upload stored or touched it meanwhile) or if a link came
   back, and deleted otherwise;
4. blob files with no row at all, older than the grace period: an upload
   whose blob was stored but never linked (a crash, or a full disk, between
   the two) leaves one. They go the same way as in sweep 3.

Mounts link only blobs that some repository still links, and a blob's row
goes only when none does, so a mount never links a blob being collected.
The grace period must outlast an upload session (`uploads.idle_seconds`):
a blob uploaded for a manifest not pushed yet survives it.

A dry run counts what is unreferenced now; a real run can free more, since
each sweep frees what the one before it was holding.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from quaylock.config import RetentionRule
from quaylock.errors import Denied
from quaylock.metadata import audit, usage
from quaylock.policy.access import matches
from quaylock.services.tags import Actor
from quaylock.storage.drivers.filesystem import KEPT


@dataclass
class Report:
    tags: int = 0
    # Tags a retention rule would delete that the tag rules keep.
    tags_kept: int = 0
    # In a dry run, which tags would go (REPOSITORY:TAG), the first 1000.
    tag_names: list[str] = field(default_factory=list)
    manifests: int = 0
    links: int = 0
    blobs: int = 0
    stray_files: int = 0
    bytes_freed: int = 0
    dry_run: bool = False
    kept_blobs: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        named = {"tags_to_delete": self.tag_names} if self.dry_run else {}
        return {
            "dry_run": self.dry_run,
            "tags_deleted": self.tags,
            "tags_kept_by_tag_rules": self.tags_kept,
            "manifests_deleted": self.manifests,
            "blob_links_deleted": self.links,
            "blobs_deleted": self.blobs,
            "stray_files_deleted": self.stray_files,
            "bytes_freed": self.bytes_freed,
        } | named


_UNREFERENCED_MANIFEST = """
    m.created_at < ?
    AND NOT EXISTS (SELECT 1 FROM tags t
                    WHERE t.repository_id = m.repository_id AND t.digest = m.digest)
    AND NOT EXISTS (SELECT 1 FROM manifest_references r
                    WHERE r.repository_id = m.repository_id
                      AND r.child_digest = m.digest AND r.manifest_digest != m.digest)
    AND (m.subject IS NULL OR NOT EXISTS (
            SELECT 1 FROM manifests s
            WHERE s.repository_id = m.repository_id AND s.digest = m.subject))
"""

_UNREFERENCED_LINK = """
    rb.created_at < ?
    AND NOT EXISTS (SELECT 1 FROM manifest_references r
                    WHERE r.repository_id = rb.repository_id
                      AND r.child_digest = rb.digest AND r.kind = 'blob')
"""


@dataclass(frozen=True, slots=True)
class _Expired:
    """A tag that a retention rule does not keep."""

    repository_id: int
    repository: str
    name: str
    digest: str
    moved_at: float
    rule: int  # its index in gc.retention


# Who deletes tags for retention rules, in tag rule checks and the audit log.
GC_ACTOR = Actor(subject="gc", tag_admin=False)


class Collector:
    """Args:
    store: the metadata store.
    driver: the filesystem blob driver.
    grace_seconds: what is younger than this stays.
    progress: called with (sweep, done, total) as work goes on.
    retention: `gc.retention` rules.
    tags: the tag rules (services.tags.TagGuard); needed with `retention`.
    """

    def __init__(
        self,
        store,
        driver,
        grace_seconds: int,
        progress: Callable[[str, int, int], None] | None = None,
        retention: list[RetentionRule] = (),
        tags=None,
    ):
        self.store = store
        self.driver = driver
        self.grace_seconds = grace_seconds
        self.progress = progress or (lambda sweep, done, total: None)
        self.retention = retention
        self.tags = tags

    async def run(self, dry_run: bool = False) -> Report:
        report = Report(dry_run=dry_run)
        if self.retention:
            await self._retention(report)
        before = time.time() - self.grace_seconds
        await self._manifests(before, report)
        await self._links(before, report)
        await self._blobs(before, report)
        await self._stray_files(before, report)
        return report

    def _expired_tags(self) -> list[_Expired]:
        """The tags that retention rules do not keep."""
        found = []
        repositories = self.store.read_all("SELECT id, name FROM repositories")
        for i, rule in enumerate(self.retention):
            pattern = re.compile(rule.tags)
            for repository_id, name in repositories:
                if not any(matches(p, name) for p in rule.repositories):
                    continue
                tags = [
                    row
                    for row in self.store.read_all(
                        "SELECT name, digest, updated_at FROM tags "
                        "WHERE repository_id = ? ORDER BY updated_at DESC, name DESC",
                        (repository_id,),
                    )
                    if pattern.fullmatch(row[0])
                ]
                found += [
                    _Expired(repository_id, name, tag, digest, moved, i)
                    for tag, digest, moved in tags[rule.keep :]
                ]
        return found

    async def _retention(self, report: Report) -> None:
        expired = self._expired_tags()
        for done, tag in enumerate(expired, 1):
            delete = functools.partial(
                self._delete_tag, tag=tag, dry_run=report.dry_run
            )
            try:
                if report.dry_run:
                    deleted = self.store.read(delete)
                else:
                    deleted = await self.store.write(delete)
            except Denied:
                report.tags_kept += 1
            else:
                report.tags += deleted
                if deleted and report.dry_run and len(report.tag_names) < 1000:
                    report.tag_names.append(f"{tag.repository}:{tag.name}")
            self.progress("tags", done, len(expired))

    def _delete_tag(self, c, tag: _Expired, dry_run: bool) -> bool:
        """Delete an expired tag, in one transaction; whether it went (or
        would go, in a dry run).

        Raises:
            Denied: the tag rules keep it (immutable or protected).
        """
        still = c.execute(
            "SELECT 1 FROM tags WHERE repository_id = ? AND name = ? "
            "AND digest = ? AND updated_at = ?",
            (tag.repository_id, tag.name, tag.digest, tag.moved_at),
        ).fetchone()
        if still is None:
            return False  # moved or deleted since it was listed
        self.tags.check_move(
            self.store, c, tag.repository, tag.name, tag.digest, None, GC_ACTOR
        )
        if not dry_run:
            c.execute(
                "DELETE FROM tags WHERE repository_id = ? AND name = ?",
                (tag.repository_id, tag.name),
            )
            audit.append(c, audit.AuditEvent(
                "tag.delete", GC_ACTOR.subject, repository=tag.repository,
                tag=tag.name, old_digest=tag.digest,
                detail=f"gc.retention[{tag.rule}] keeps newer tags",
            ))  # fmt: skip
        return True

    async def _manifests(self, before: float, report: Report) -> None:
        # Deleting an index can free its children: repeat until none goes.
        for round_ in range(100):
            found = self.store.read_all(
                "SELECT m.repository_id, m.digest FROM manifests m WHERE "
                + _UNREFERENCED_MANIFEST,
                (before,),
            )
            if not found or report.dry_run:
                report.manifests += len(found)
                if found or round_ == 0:
                    self.progress("manifests", len(found), len(found))
                return
            for done, (repository_id, digest) in enumerate(found, 1):
                if await self.store.write(
                    lambda c, r=repository_id, d=digest: _delete_manifest(
                        c, r, d, before
                    )
                ):
                    report.manifests += 1
                self.progress("manifests", done, len(found))

    async def _links(self, before: float, report: Report) -> None:
        found = self.store.read_all(
            "SELECT rb.repository_id, rb.digest FROM repository_blobs rb WHERE "
            + _UNREFERENCED_LINK,
            (before,),
        )
        if report.dry_run:
            report.links = len(found)
            self.progress("blob links", len(found), len(found))
            return
        if not found:
            self.progress("blob links", 0, 0)
        for done, (repository_id, digest) in enumerate(found, 1):
            if await self.store.write(
                lambda c, r=repository_id, d=digest: _delete_link(c, r, d, before)
            ):
                report.links += 1
            self.progress("blob links", done, len(found))

    async def _blobs(self, before: float, report: Report) -> None:
        found = self.store.read_all(
            "SELECT b.digest, b.size FROM blobs b WHERE b.created_at < ? AND NOT "
            "EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest)",
            (before,),
        )
        if report.dry_run:
            report.blobs = len(found)
            report.bytes_freed = sum(size for _, size in found)
            self.progress("blobs", len(found), len(found))
            return
        if not found:
            self.progress("blobs", 0, 0)
        for done, (digest, size) in enumerate(found, 1):
            try:
                await self._delete_blob(digest, size, before, report)
            finally:
                self.progress("blobs", done, len(found))

    async def _stray_files(self, before: float, report: Report) -> None:
        found = [
            digest
            for digest in self.driver.list_blobs(before)
            if self.store.read_one("SELECT 1 FROM blobs WHERE digest = ?", (digest,))
            is None
        ]
        if report.dry_run:
            report.stray_files = len(found)
        for done, digest in enumerate(found, 1):
            if not report.dry_run:
                aside = self.driver.quarantine_blob(digest, before)
                if aside not in (None, KEPT):
                    # A row that appeared meanwhile (a link) keeps the file.
                    if self.store.read_one(
                        "SELECT 1 FROM blobs WHERE digest = ?", (digest,)
                    ):
                        self.driver.restore_blob(digest, aside)
                    else:
                        size = os.stat(aside).st_size
                        self.driver.purge_blob(aside)
                        report.stray_files += 1
                        report.bytes_freed += size
            self.progress("stray files", done, len(found))
        if not found:
            self.progress("stray files", 0, 0)

    async def _delete_blob(
        self, digest: str, size: int, before: float, report: Report
    ) -> None:
        if not await self.store.write(lambda c: _delete_blob_row(c, digest)):
            return  # linked again, or gone already
        aside = self.driver.quarantine_blob(digest, before)
        relinked = self.store.read_one(
            "SELECT 1 FROM repository_blobs WHERE digest = ?", (digest,)
        )
        if aside is None:
            return  # no file: nothing more to free
        if aside != KEPT and relinked is None:
            self.driver.purge_blob(aside)
            report.blobs += 1
            report.bytes_freed += size
            return
        if aside != KEPT:
            self.driver.restore_blob(digest, aside)
        # The file stays, so its row comes back: a file with no row would
        # never be collected again.
        await self.store.write(
            lambda c: c.execute(
                "INSERT INTO blobs VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (digest, size, time.time()),
            )
        )
        report.kept_blobs.append(digest)


def _delete_manifest(c, repository_id: int, digest: str, before: float) -> bool:
    still = c.execute(
        "SELECT r.name FROM manifests m JOIN repositories r ON r.id = m.repository_id "
        "WHERE m.repository_id = ? AND m.digest = ? AND " + _UNREFERENCED_MANIFEST,
        (repository_id, digest, before),
    ).fetchone()
    return still is not None and usage.remove_manifest(
        c, repository_id, still[0], digest
    )


def _delete_link(c, repository_id: int, digest: str, before: float) -> bool:
    row = c.execute(
        "SELECT r.name FROM repository_blobs rb JOIN repositories r "
        "ON r.id = rb.repository_id WHERE rb.repository_id = ? AND rb.digest = ? AND "
        + _UNREFERENCED_LINK,
        (repository_id, digest, before),
    ).fetchone()
    return row is not None and usage.remove_link(c, repository_id, row[0], digest)


def _delete_blob_row(c, digest: str) -> bool:
    return (
        c.execute(
            "DELETE FROM blobs WHERE digest = ? AND NOT EXISTS "
            "(SELECT 1 FROM repository_blobs WHERE digest = ?)",
            (digest, digest),
        ).rowcount
        > 0
    )
