"""Registry operations: blobs, manifests, tags, listings and referrers.

Route handlers call these and nothing below them, so every rule here holds
for every route and for the command line alike.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

from quaylock import log, oci
from quaylock.config import Config, size_limits
from quaylock.errors import (
    BlobUnknown,
    Denied,
    DigestInvalid,
    Held,
    ManifestUnknown,
    MethodNotAllowed,
    NameUnknown,
    PaginationInvalid,
    TooLarge,
)
from quaylock.metadata import audit, policy
from quaylock.metadata.store import ManifestRecord, SQLiteStore
from quaylock.metrics import Metrics
from quaylock.oci import Digest
from quaylock.services.manifests import parse_manifest
from quaylock.services.quotas import QuotaGuard
from quaylock.services.signing import SignatureChecker
from quaylock.services.tag_admin import TagAdmin
from quaylock.services.tags import Actor, TagGuard
from quaylock.services.uploads import UploadService
from quaylock.services.webhooks import Webhooks
from quaylock.storage.driver import BlobDriver

# The actor of operations that no request started (the command line).
SYSTEM = Actor("system")

# Called with a repository name: may the caller pull from it?
MayPull = Callable[[str], bool]
# Names read at the most by one filtered catalog request, and repositories
# checked for a mount without `from`.
_CATALOG_SCAN = 10_000
_MOUNT_SCAN = 100

# Manifests larger than this are parsed in a worker thread: a 4 MiB manifest
# takes about half a second to parse, which would stall every other request.
_PARSE_ON_LOOP_BYTES = 64 * 1024


@dataclass(slots=True)
class Page:
    items: list[str]
    # The `last` value for the next page, or None on the last page.
    next_last: str | None
    limit: int


class Registry:
    """The operations of the distribution API over the stores.

    Args:
        config: the registry's configuration.
        driver: where blob bytes live.
        store: where repositories, manifests and tags live.
    """

    def __init__(
        self,
        config: Config,
        driver: BlobDriver,
        store: SQLiteStore,
        metrics: Metrics | None = None,
    ):
        self.config = config
        self.driver = driver
        self.store = store
        self.metrics = metrics or Metrics()
        self.quotas = QuotaGuard(config.quotas)
        self.uploads = UploadService(driver, store, config, self.quotas)
        self.tags = TagGuard(config.tags, store)
        self.tag_admin = TagAdmin(self)
        self.signing = SignatureChecker(config.signatures, store, driver, self.metrics)
        self.webhooks = Webhooks(config.webhooks)

    def _emit(self, event: audit.AuditEvent) -> None:
        """Tell webhooks and metrics about an audit record just committed."""
        self.webhooks.emit(event)
        self.metrics.inc("quaylock_audit_events_total", action=event.action)

    # Blobs

    async def blob_size(self, repository: str, digest: Digest) -> int:
        """Return the size of a blob visible in `repository`.

        Raises:
            BlobUnknown: the repository has no such blob.
        """
        size = await self.store.repository_blob_size(repository, str(digest))
        if size is None:
            raise BlobUnknown(f"blob {digest} is not in repository {repository}")
        if await self.driver.blob_size(str(digest)) is None:
            # Listed, but its bytes are gone (lost on disk): say so, never
            # promise bytes that cannot be sent.
            log.event(log.logger, 40, "blob listed but missing from the store",
                      repository=repository, digest=str(digest))  # fmt: skip
            raise BlobUnknown(
                f"blob {digest} is listed in {repository} but its bytes are "
                "missing from the store"
            )
        return size

    async def mount_blob(
        self,
        repository: str,
        digest: Digest,
        source: str | None,
        may_pull: MayPull | None = None,
        subject: str | None = None,
    ) -> int | None:
        """Make a blob from another repository visible here, without bytes.

        With `source`, the blob must be visible there; without it, in some
        repository. Either way the caller must be able to pull it there
        (`may_pull`; None when authentication is off). Returns the blob's
        size, or None when it cannot be mounted: the caller then opens an
        upload session instead, as the spec asks, and learns nothing about
        repositories it may not read.
        """
        if source is not None:
            if may_pull is not None and not may_pull(source):
                return None
            size = await self.store.repository_blob_size(source, str(digest))
        elif may_pull is not None:
            holders = await self.store.repositories_with_blob(str(digest), _MOUNT_SCAN)
            if not any(may_pull(name) for name in holders):
                return None
            size = await self.store.linked_blob_size(str(digest))
        else:
            size = await self.store.linked_blob_size(str(digest))
        if size is None or await self.driver.blob_size(str(digest)) is None:
            return None
        if size > size_limits(self.config.limits, repository).blob_max_bytes:
            return None  # over this repository's blob limit: upload instead
        # A mount counts like an upload: the quotas check the bytes it adds.
        linked = await self.store.link_blob(
            repository, str(digest), size, subject=subject,
            check=self._quota_check(),
            require_linked=True,
        )  # fmt: skip
        return size if linked else None

    def _quota_check(self):
        return self.quotas.check if self.quotas.enabled else None

    async def delete_blob(self, repository: str, digest: Digest) -> None:
        self._check_deletes()
        if not await self.store.unlink_blob(repository, str(digest)):
            raise BlobUnknown(f"blob {digest} is not in repository {repository}")

    # Manifests

    async def get_manifest(self, repository: str, reference: str) -> ManifestRecord:
        """Return the manifest a tag or digest names.

        Raises:
            ManifestUnknown: nothing by that reference in the repository.
        """
        manifest = await self.store.get_manifest(repository, reference)
        if manifest is None:
            if not await self.store.repository_exists(repository):
                raise NameUnknown(f"repository {repository} is not known")
            raise ManifestUnknown(
                f"manifest {reference} is not in repository {repository}"
            )
        return manifest

    async def put_manifest(
        self,
        repository: str,
        reference: str,
        content_type: str | None,
        content: bytes,
        actor: Actor = SYSTEM,
    ) -> ManifestRecord:
        """Validate and store a manifest; tag it when `reference` is a tag.

        Raises:
            TooLarge: the manifest is above `limits.manifest_max_bytes`.
            ManifestInvalid: see `parse_manifest`.
            DigestInvalid: `reference` is a digest the content does not have.
            ManifestBlobUnknown: a blob or child manifest is not here.
            InsufficientStorage: the disk is at its free-space floor.
        """
        limits = self.check_manifest_size(len(content), repository)
        # Manifests go to the metadata database, on the same disk: below the
        # floor they wait like uploads, or they could fill it to the last byte.
        self.uploads.check_space(len(content))
        tag = None
        if oci.is_digest(reference):
            expected = Digest.parse(reference)
            digest = Digest.of(content, expected.algorithm)
            if digest != expected:
                raise DigestInvalid(
                    f"manifest digest is {digest}, not {expected} as in the URL"
                )
        else:
            tag = oci.check_tag(reference)
            digest = Digest.of(content)
            await self._refused_if(
                actor, repository, tag, self.tags.check_name, repository, tag
            )
        if len(content) > _PARSE_ON_LOOP_BYTES:
            parsed = await asyncio.to_thread(parse_manifest, content, content_type)
        else:
            parsed = parse_manifest(content, content_type)
        for count, name, what in (
            (parsed.layers, "manifest_max_layers", "layers"),
            (parsed.children, "index_max_children", "child manifests"),
        ):
            if count > limits.values[name]:
                raise TooLarge(
                    f"manifest lists {count} {what}; manifests in {repository} may "
                    f"list at most {limits.values[name]} ({limits.sources[name]})",
                    detail={"limit": limits.values[name], "size": count},
                )
        record = ManifestRecord(
            digest=str(digest),
            media_type=parsed.media_type,
            content=content,
            artifact_type=parsed.artifact_type,
            subject=parsed.subject,
            annotations=parsed.annotations,
        )
        await self.check_new_repository(repository, actor, tag)
        if tag is not None:
            await self._refused_if(
                actor, repository, tag,
                self.signing.require_for_tag, repository, tag, record.digest,
                new=record.digest,
            )  # fmt: skip

        def hook(c, old: str | None) -> bool:
            if tag is not None:
                try:
                    self.tags.check_move(
                        self.store, c, repository, tag, old, record.digest, actor
                    )
                except Denied as exc:
                    if not isinstance(exc, Held):
                        # For the audit record: the move that was refused.
                        exc.digests = (old, record.digest)
                        raise
                    # Keep the manifest, leave the tag: an admin decides.
                    hold_id = _add_hold(
                        c, "tag", repository, tag, record.digest, exc.message, actor
                    )
                    held.append((hold_id, exc.message))
                    emitted.append(_event(
                        "held", actor, repository, tag, old, record.digest,
                        f"hold {hold_id}: {exc.message}",
                    ))  # fmt: skip
                    audit.append(c, emitted[-1])
                    return False
            action = (
                "push"
                if tag is None or old == record.digest
                else ("tag.create" if old is None else "tag.move")
            )
            emitted.append(_event(action, actor, repository, tag, old, record.digest))
            audit.append(c, emitted[-1])
            return True

        emitted: list[audit.AuditEvent] = []
        held: list[tuple[int, str]] = []
        await self._refused_if(
            actor, repository, tag,
            self.store.put_manifest, repository, record, parsed.references, tag, hook,
            actor.subject, self._quota_check(), emitted=emitted,
        )  # fmt: skip
        if held:
            hold_id, reason = held[0]
            raise Held(
                f"{reason}: held for an admin as hold {hold_id}. The manifest is "
                f"stored as {record.digest}; {tag!r} will point at it once an "
                f"admin approves (quaylock tag approve {hold_id})"
            )
        return record

    async def check_new_repository(
        self, repository: str, actor: Actor, tag: str | None = None
    ) -> None:
        """The look-alike guard, before anything creates `repository`.

        Raises:
            Denied: the name looks like an existing repository's.
            Held: it does, and the mode is hold; the name is recorded for an
                admin, and the client pushes again once it is approved.
        """
        if await self.store.repository_exists(repository):
            return
        try:
            await self._refused_if(
                actor, repository, tag,
                self.tags.check_new_repository, self.store, repository, actor,
            )  # fmt: skip
        except Held as exc:
            reason = exc.message

            def record(c) -> tuple[int, audit.AuditEvent]:
                hold_id = _add_hold(
                    c, "repository", "", repository, None, reason, actor
                )
                event = _event(
                    "held", actor, repository, tag, None, None,
                    f"hold {hold_id}: {reason}",
                )  # fmt: skip
                audit.append(c, event)
                return hold_id, event

            hold_id, event = await self._refused_if(
                actor, repository, tag, self.store.write, record
            )
            self._emit(event)
            raise Held(
                f"{reason}: held for an admin as hold {hold_id}; push again "
                f"once an admin approves (quaylock tag approve {hold_id})"
            ) from None

    async def set_tag(
        self, repository: str, tag: str, digest: str, actor: Actor = SYSTEM
    ) -> str | None:
        """Point `tag` at a manifest already in the repository, under the
        same rules as a push (`quaylock tag rollback`); return the old digest."""
        manifest = await self.get_manifest(repository, digest)
        moved: list[str | None] = []

        def hook(c, old: str | None) -> None:
            self.tags.check_move(
                self.store, c, repository, tag, old, manifest.digest, actor
            )
            moved.append(old)
            action = "tag.create" if old is None else "tag.move"
            emitted.append(_event(action, actor, repository, tag, old, manifest.digest))
            audit.append(c, emitted[-1])

        emitted: list[audit.AuditEvent] = []
        self.tags.check_name(repository, tag)
        await self._refused_if(
            actor, repository, tag,
            self.signing.require_for_tag, repository, tag, manifest.digest,
        )  # fmt: skip
        await self._refused_if(
            actor, repository, tag,
            self.store.put_manifest, repository, manifest, self.references(manifest),
            tag, hook, actor.subject, self._quota_check(), emitted=emitted,
        )  # fmt: skip
        return moved[0] if moved else None

    @staticmethod
    def references(manifest: ManifestRecord) -> list:
        """What a stored manifest refers to, for storing it again: should it
        be deleted meanwhile, it comes back with its references, not
        without them."""
        return parse_manifest(manifest.content, manifest.media_type).references

    async def _refused_if(
        self, actor: Actor, repository, tag, fn, *args,
        emitted: list | None = None, new: str | None = None,
    ):  # fmt: skip
        """Run `fn`; a Denied is written to the audit log and sent to the
        webhooks, then raised. On success, send the `emitted` events. The
        record names the digests the refused move was from and to, when the
        refusal carries them (`digests`) or the caller knows the new one."""
        try:
            result = fn(*args)
            if hasattr(result, "__await__"):
                result = await result
        except Held:
            raise  # the caller records the hold
        except Denied as exc:
            old, to = getattr(exc, "digests", (None, new))
            event = _event("refused", actor, repository, tag, old, to, exc.message)
            await self.store.write(lambda c: audit.append(c, event), durable=False)
            self._emit(event)
            raise
        for event in emitted or ():
            self._emit(event)
        return result

    def check_manifest_size(self, size: int, repository: str = ""):
        """Raises TooLarge over the repository's manifest limit; returns the
        repository's size limits for the other checks."""
        limits = size_limits(self.config.limits, repository)
        limit = limits.manifest_max_bytes
        if size > limit:
            raise TooLarge(
                f"manifest is {size} bytes; the limit is {limit} bytes "
                f"({limits.sources['manifest_max_bytes']})",
                detail={"limit": limit, "size": size},
            )
        return limits

    async def delete_manifest(
        self, repository: str, reference: str, actor: Actor = SYSTEM
    ) -> None:
        """Delete a manifest by digest (and its tags), or a tag alone."""
        self._check_deletes()
        emitted: list[audit.AuditEvent] = []
        if oci.is_digest(reference):
            digest = str(Digest.parse(reference))

            def untag_all(c, tags: list[str]) -> None:
                for tag in tags:
                    self.tags.check_move(
                        self.store, c, repository, tag, digest, None, actor
                    )
                    emitted.append(
                        _event("tag.delete", actor, repository, tag, digest, None)
                    )
                    audit.append(c, emitted[-1])
                emitted.append(
                    _event("manifest.delete", actor, repository, None, digest, None)
                )
                audit.append(c, emitted[-1])

            await self._refused_if(
                actor,
                repository,
                None,
                self.store.delete_manifest,
                repository,
                digest,
                untag_all,
                emitted=emitted,
            )
        else:
            tag = oci.check_tag(reference)

            def untag(c, digest: str) -> None:
                self.tags.check_move(
                    self.store, c, repository, tag, digest, None, actor
                )
                emitted.append(
                    _event("tag.delete", actor, repository, tag, digest, None)
                )
                audit.append(c, emitted[-1])

            await self._refused_if(
                actor, repository, tag, self.store.delete_tag, repository, tag, untag,
                emitted=emitted,
            )  # fmt: skip

    # Listings

    async def list_tags(self, repository: str, n: str | None, last: str | None) -> Page:
        limit = self._page_size(n)
        if not await self.store.repository_exists(repository):
            raise NameUnknown(f"repository {repository} is not known")
        items = await self.store.list_tags(repository, limit + 1, last)
        return _page(items, limit)

    async def list_repositories(
        self, n: str | None, last: str | None, may_pull: MayPull | None = None
    ) -> Page:
        """One page of the catalog: the repositories the caller may pull.

        Filtering reads at most `_CATALOG_SCAN` names per request; a page
        cut short by that cap still links to the next one, so the cost of a
        request never grows with the store.
        """
        limit = self._page_size(n)
        if may_pull is None:
            items = await self.store.list_repositories(limit + 1, last)
            return _page(items, limit)
        found: list[str] = []
        cursor, scanned = last, 0
        while len(found) <= limit and scanned < _CATALOG_SCAN:
            batch = await self.store.list_repositories(500, cursor)
            if not batch:
                return _page(found, limit)
            for name in batch:
                scanned += 1
                cursor = name
                if may_pull(name):
                    found.append(name)
                    if len(found) > limit:
                        break
        if len(found) > limit:
            return _page(found, limit)
        return Page(found, cursor, limit)

    async def referrers(
        self,
        repository: str,
        digest: Digest,
        artifact_type: str | None,
        last: str | None = None,
    ) -> tuple[bytes, str | None]:
        """Return one page of the referrers of `digest` as an OCI image index,
        and the `last` value of the next page (None on the last page).

        A page holds at most `limits.page_max_entries` descriptors and about
        `limits.manifest_max_bytes` of JSON, so that manifests with large
        annotations cannot make one answer huge. Unknown repositories and
        subjects give an empty index, never a 404 (distribution-spec
        "Listing Referrers").
        """
        if last is not None:
            last = str(Digest.parse(last))
        limits = self.config.limits
        rows = await self.store.list_referrers(
            repository, str(digest), artifact_type, last, limits.page_max_entries + 1
        )
        entries: list[bytes] = []
        used = 0
        next_last = None
        for i, (ref_digest, media_type, size, ref_type, stored) in enumerate(rows):
            if i == limits.page_max_entries:
                next_last = rows[i - 1][0]
                break
            entry = _referrer_entry(ref_digest, media_type, size, ref_type, stored)
            if entries and used + len(entry) > limits.manifest_max_bytes:
                next_last = rows[i - 1][0]
                break
            entries.append(entry)
            used += len(entry)
        body = b"".join(
            (
                b'{"schemaVersion":2,"mediaType":"',
                oci.OCI_INDEX.encode(),
                b'","manifests":[',
                b",".join(entries),
                b"]}",
            )
        )
        return body, next_last

    def page_size(self, n: str | None) -> int:
        """The page size a request's `n` asks for, capped.

        Raises:
            PaginationInvalid: `n` is not a whole number.
        """
        return self._page_size(n)

    def _page_size(self, n: str | None) -> int:
        cap = self.config.limits.page_max_entries
        if n is None or n == "":
            return min(self.config.limits.page_default_entries, cap)
        if not oci.is_number(n):
            raise PaginationInvalid(f"n must be a whole number >= 0, got {n[:20]!r}")
        return min(int(n), cap)

    def _check_deletes(self) -> None:
        if not self.config.deletes:
            raise MethodNotAllowed("deletes are disabled on this registry")


def _add_hold(c, kind, repository, name, digest, reason, actor: Actor) -> int:
    """Record a held name, or refuse it when too many wait already."""
    try:
        return policy.add_hold(
            c, kind, repository, name, digest, reason, actor.subject, actor.client
        )
    except policy.TooManyHolds as exc:
        raise Denied(f"{reason}; it cannot be held for an admin: {exc}") from None


def _event(
    action, actor: Actor, repository, tag, old, new, detail=None
) -> audit.AuditEvent:
    return audit.AuditEvent(
        action,
        actor.subject,
        actor.client,
        actor.user_agent,
        repository,
        tag,
        old,
        new,
        detail,
    )


def _referrer_entry(
    digest: str,
    media_type: str,
    size: int,
    artifact_type: str | None,
    annotations: str | None,
) -> bytes:
    """One descriptor of a referrers index, as JSON; the manifest's stored
    annotations (already JSON) are spliced in, not parsed again."""
    entry = {"mediaType": media_type, "digest": digest, "size": size}
    if artifact_type:
        entry["artifactType"] = artifact_type
    text = json.dumps(entry, separators=(",", ":"))
    if annotations:
        text = f'{text[:-1]},"annotations":{annotations}}}'
    return text.encode()


def _page(items: list[str], limit: int) -> Page:
    if len(items) > limit:
        items = items[:limit]
        return Page(items, items[-1] if items else None, limit)
    return Page(items, None, limit)
