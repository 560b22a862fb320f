"""Blob upload sessions: start, append chunks, finish, cancel, mount.

Invariants:

- The metadata row's `size` is the committed length of a session. Bytes past
  it on disk belong to a chunk that failed and are cut off before the next
  write, so a chunk is applied whole or not at all, even across a crash.
- A blob becomes visible (`link_blob`) only after its digest was checked
  against every staged byte and the driver made it durable.
- Memory per upload is bounded by two batches (`BATCH_BYTES`), whatever the
  blob's size: bytes stream from the socket to the driver.

Hashing: a running hash is kept in this process while one session's chunks
keep arriving here. When a chunk lands on another process (or after a
restart) the hash is recomputed from the staged bytes at the end, which
costs one read of the blob.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from quaylock import log
from quaylock.config import Config, size_limits
from quaylock.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    Denied,
    DigestInvalid,
    InsufficientStorage,
    RangeInvalid,
    SizeInvalid,
    TooLarge,
    TooManyRequests,
    Unavailable,
)
from quaylock.metadata import usage
from quaylock.metadata.store import ReservingSession, SQLiteStore, UploadRecord
from quaylock.oci import Digest, is_number
from quaylock.storage.driver import BlobDriver, PathNotFound, UploadBusy

BATCH_BYTES = 1024 * 1024
# Batches this small are hashed on the event loop (about 40 us for 64 KiB):
# a thread hop costs more.
INLINE_HASH_BYTES = 64 * 1024
_RUNNING_HASHES_MAX = 4096
# Expired sessions looked at per page, and pages per purge pass.
_PURGE_BATCH = 100
_PURGE_PAGES = 50
# Least bytes reserved at a time while a body of unknown length streams in.
_RESERVE_STEP = 64 * 1024
_RETRY_SECONDS = "60"

# A request body, read with at most this many bytes.
Body = Callable[[int], AsyncIterator[bytes]]


@dataclass(frozen=True, slots=True)
class Owner:
    """Who opens a session, and from where: only they may use it."""

    subject: str = "anonymous"
    client: str = ""
    # Count sessions per subject (with authentication on; without it,
    # everyone is "anonymous" and only the address tells clients apart).
    per_subject: bool = True


@dataclass(slots=True)
class ChunkRange:
    """An inclusive byte range from a Content-Range header."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_content_range(value: str) -> ChunkRange:
    """Parse ``start-end`` (as the spec writes it) or ``bytes start-end/*``.

    Raises:
        RangeInvalid: the header is not a range.
    """
    text = value.strip()
    if text.startswith("bytes"):
        text = text[5:].lstrip(" =")
    text = text.split("/", 1)[0]
    start, sep, end = text.partition("-")
    if not sep or not is_number(start) or not is_number(end) or int(end) < int(start):
        raise RangeInvalid(f"invalid Content-Range {value[:60]!r}: expected start-end")
    return ChunkRange(int(start), int(end))


def new_upload_id() -> str:
    return secrets.token_urlsafe(24)


class UploadService:
    """Upload sessions over a blob driver and the metadata store."""

    def __init__(
        self, driver: BlobDriver, store: SQLiteStore, config: Config, quotas=None
    ):
        self.driver = driver
        self.store = store
        self.config = config
        # services.quotas.QuotaGuard, or None: no quotas.
        self.quotas = quotas if quotas is not None and quotas.enabled else None
        # upload_id -> (committed offset, sha256 of bytes [0, offset))
        self._hashes: OrderedDict[str, tuple[int, object]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        # upload_id -> committed size, for sessions whose failed chunk could
        # not give its reservation back yet (purge_expired retries).
        self._unsettled: dict[str, int] = {}

    def disk_headroom(self) -> tuple[int, int]:
        """(bytes free on the blob store's disk, bytes above the floor)."""
        storage = self.config.storage
        stat = os.statvfs(self.config.storage_root)
        free = stat.f_bavail * stat.f_frsize
        total = stat.f_blocks * stat.f_frsize
        floor = max(storage.min_free_bytes, total * storage.min_free_percent // 100)
        return free, free - floor

    def check_space(self, wanted: int) -> None:
        """Refuse a write of `wanted` bytes (a manifest) that would take the
        disk to its floor, counting what uploads have reserved.

        Raises:
            InsufficientStorage: as `_check_disk`.
        """
        self._check_disk(wanted, self.store.in_flight_bytes())

    def _check_disk(self, wanted: int = 0, in_flight: int = 0) -> None:
        """Refuse an upload that would take the disk to its floor, counting
        `in_flight` bytes that other chunks have reserved but may not have
        written yet (those they wrote are counted twice meanwhile: the
        check errs on the side of the floor).

        Raises:
            InsufficientStorage: the disk is at its floor, or `wanted` bytes
                would take it there.
        """
        free, headroom = self.disk_headroom()
        if headroom - in_flight <= wanted:
            error = InsufficientStorage(
                f"the registry's disk has {free} bytes free, at or near its floor "
                f"(storage.min_free_bytes {self.config.storage.min_free_bytes}, "
                f"storage.min_free_percent {self.config.storage.min_free_percent}); "
                "uploads resume when space is freed, pulls go on"
            )
            error.headers["Retry-After"] = _RETRY_SECONDS
            raise error

    async def start(self, repository: str, owner: Owner = Owner()) -> UploadRecord:
        """Open a session for `owner`.

        Raises:
            TooManyRequests: the owner, or its address, has as many open
                sessions as `uploads.max_sessions_per_*` allows.
            InsufficientStorage: the disk is at its free-space floor.
        """
        self._check_disk()
        limits = self.config.uploads
        upload_id = new_upload_id()
        await self.driver.start_upload(upload_id)

        def within_limits(by_subject: int, by_client: int) -> None:
            """Runs in the transaction that inserts the session, so workers
            racing for the last free session cannot both get it."""
            for count, limit, setting, who in (
                (by_subject, limits.max_sessions_per_subject,
                 "max_sessions_per_subject", owner.subject),
                (by_client, limits.max_sessions_per_address,
                 "max_sessions_per_address", owner.client),
            ):  # fmt: skip
                if setting.endswith("subject") and not owner.per_subject:
                    continue
                if count >= limit:
                    error = TooManyRequests(
                        f"{who} has {count} open upload sessions; the limit is "
                        f"{limit} (uploads.{setting}): finish or cancel some, or "
                        f"wait up to {limits.idle_seconds} s for idle ones to expire"
                    )
                    error.reason = "sessions"
                    # The sooner of a minute and the idle time: one may
                    # have expired by then.
                    error.headers["Retry-After"] = str(
                        min(int(_RETRY_SECONDS), limits.idle_seconds)
                    )
                    raise error

        try:
            await self.store.create_upload(
                upload_id, repository, owner.subject, owner.client,
                time.time() - limits.idle_seconds, within_limits,
            )  # fmt: skip
        except BaseException:
            await self.driver.abort_upload(upload_id)
            raise
        self._hashes[upload_id] = (0, hashlib.sha256())
        self._trim_hashes()
        return UploadRecord(
            upload_id, repository, 0, 0.0, 0.0, owner.subject, owner.client
        )

    async def get(
        self, repository: str, upload_id: str, owner: Owner | None = None
    ) -> UploadRecord:
        """Return the session, which must belong to `repository`, to
        `owner` (when given) and not have expired.

        Raises:
            BlobUploadUnknown: no such session here for this owner; the
                answer is the same whoever's session it is.
        """
        record = await self.store.get_upload(upload_id)
        idle = time.time() - self.config.uploads.idle_seconds
        if (
            record is None
            or record.repository != repository
            or (owner is not None and record.subject != owner.subject)
            or record.updated_at < idle
        ):
            raise BlobUploadUnknown(
                f"upload {upload_id[:64]} is not open in {repository}"
            )
        return record

    def _chunk_limit(self, record: UploadRecord, limits, declared: int | None) -> int:
        """The most bytes the next chunk of `record` may carry under the
        chunk and blob limits; refuses at once what a declared length
        already breaks.

        Raises:
            TooLarge: `declared` is over the chunk or the blob limit.
        """
        if declared is not None:
            self._check_size(record, limits, record.size + declared, declared)
        return min(limits.chunk_max_bytes, limits.blob_max_bytes - record.size)

    def _reservation_check(self, record: UploadRecord, digest: str | None) -> Callable:
        """What `store.reserve_upload` checks, in its transaction, before a
        chunk may stage more bytes: the staging caps, the disk floor and the
        quotas. Returns the bytes to reserve against the quotas, by scope."""
        uploads = self.config.uploads
        nothing = dict.fromkeys(usage.SCOPES, 0)

        def check(c, session: ReservingSession, extra: int) -> dict[str, int]:
            total, in_flight = usage.staged(c)
            caps = [(uploads.staged_max_bytes, "staged_max_bytes", total)]
            if session.subject != "anonymous":
                caps.append((
                    uploads.staged_max_bytes_per_subject,
                    "staged_max_bytes_per_subject",
                    usage.staged(c, session.subject)[0],
                ))  # fmt: skip
            for cap, setting, staged in caps:
                if session.staged + extra > cap:
                    # This upload alone would pass the cap: waiting for
                    # others to finish cannot help.
                    raise _StagingTooLarge(
                        f"the upload would hold {session.staged + extra} bytes in "
                        f"staging, past uploads.{setting} ({cap} bytes): a blob "
                        "this large cannot be uploaded here",
                        detail={"limit": cap, "size": session.staged + extra},
                    )
                if staged + extra > cap:
                    raise self._staging_full(record)
            self._check_disk(extra, in_flight)
            if self.quotas is None:
                return nothing
            wanted = usage.wanted(c, session.repository, digest, extra)
            self.quotas.check(
                c, session.repository, session.subject, wanted, session.reserved
            )
            return wanted

        return check

    def _staging_full(self, record: UploadRecord) -> Unavailable:
        uploads = self.config.uploads
        error = Unavailable(
            "uploads in progress hold all the staging space allowed: "
            f"{uploads.staged_max_bytes} bytes in all (uploads.staged_max_bytes), "
            f"{uploads.staged_max_bytes_per_subject} for {record.subject} "
            "(uploads.staged_max_bytes_per_subject); finish or cancel uploads, "
            "or try again later"
        )
        error.reason = "staging"
        error.headers["Retry-After"] = _RETRY_SECONDS
        return error

    def _check_size(self, record: UploadRecord, limits, total: int, chunk: int) -> None:
        if chunk > limits.chunk_max_bytes:
            raise TooLarge(
                f"a chunk of {chunk} bytes is over the limit of "
                f"{limits.chunk_max_bytes} bytes ({limits.sources['chunk_max_bytes']})",
                detail={"limit": limits.chunk_max_bytes, "size": chunk},
            )
        if total > limits.blob_max_bytes:
            raise TooLarge(
                f"the blob would be {total} bytes; blobs in {record.repository} "
                f"may be at most {limits.blob_max_bytes} bytes "
                f"({limits.sources['blob_max_bytes']})",
                detail={"limit": limits.blob_max_bytes, "size": total},
            )

    async def _staged(
        self,
        record: UploadRecord,
        body: Body,
        declared: int | None,
        digest: Digest | None = None,
    ) -> int:
        """Stage one chunk under the limits.

        A chunk over the chunk or blob limit (413), that would take the
        session alone past a staging cap (413), or over a quota (403), ends
        the session and its staged bytes are deleted. A chunk refused
        for the staging caps (503) or the disk floor (507) is discarded but
        the session stays, so the client can send it again after
        Retry-After.
        """
        limits = size_limits(self.config.limits, record.repository)
        try:
            limit = self._chunk_limit(record, limits, declared)
        except TooLarge:
            await self._discard(record)
            raise
        try:
            return await self._stage(
                record, self._reserving(record, body(limit), declared, digest)
            )
        except (Denied, _StagingTooLarge):
            await self._discard(record)
            raise
        except TooLarge:
            await self._discard(record)
            # The body ran past `limit`: name the limit it passed.
            self._check_size(record, limits, record.size + limit + 1, limit + 1)
            raise

    async def _reserving(
        self,
        record: UploadRecord,
        chunks: AsyncIterator[bytes],
        declared: int | None,
        digest: Digest | None,
    ) -> AsyncIterator[bytes]:
        """Pass `chunks` on, reserving their bytes before they are written
        (staging space, disk headroom and quotas, in one transaction), in
        growing steps as they arrive. A declared length is checked first
        against what is free now, without reserving it: a chunk that cannot
        fit is refused before any byte is read, and a slow one holds no more
        than it has sent. Reserved bytes that do not arrive go back when the
        chunk settles.

        A chunk declared at no more than one step (`_RESERVE_STEP`) is only
        checked: a reservation is a database write, which would cost a
        small blob's push a sixth of its speed. Parallel small chunks can
        so pass the staging caps and the disk floor by a step each (the
        session limits bound how many there are); quotas hold exactly
        anyway, since linking the blob checks them again."""
        check = self._reservation_check(record, str(digest) if digest else None)
        if declared:
            self.store.precheck_upload(record.upload_id, declared, check)
            if declared <= _RESERVE_STEP:
                async for chunk in chunks:
                    yield chunk
                return
        reserved = received = 0
        async for chunk in chunks:
            received += len(chunk)
            if received > reserved:
                # Steps grow with the upload (a sixteenth of it, at least
                # _RESERVE_STEP): a few hundred writes per GiB, and never
                # much more held than has arrived.
                step = max(_RESERVE_STEP, received // 16, received - reserved)
                if declared:
                    step = max(min(step, declared - reserved), received - reserved)
                await self.store.reserve_upload(record.upload_id, step, check)
                reserved += step
            yield chunk

    async def append(
        self,
        record: UploadRecord,
        body: Body,
        content_range: ChunkRange | None,
        content_length: int | None,
    ) -> int:
        """Append one chunk; return the session's new committed size.

        Raises:
            RangeInvalid: the chunk does not start where the session ends,
                or its length disagrees with its range. Nothing is written.
            TooLarge: the chunk or the blob is over its limit; the session
                and its staged bytes are gone.
        """
        async with self._hold(record.upload_id):
            record = await self.get(record.repository, record.upload_id)
            self._check_range(record, content_range, content_length)
            size = await self._staged(record, body, content_length)
            if content_range is not None and size - record.size != content_range.length:
                await self._undo(record)
                raise RangeInvalid(
                    f"Content-Range declared {content_range.length} bytes, "
                    f"but {size - record.size} arrived; the chunk was discarded"
                )
            await self.store.set_upload_size(record.upload_id, size)
            return size

    async def finish(
        self,
        record: UploadRecord,
        digest: Digest,
        body: Body | None,
        content_range: ChunkRange | None = None,
        content_length: int | None = None,
    ) -> int:
        """Apply an optional last chunk, verify `digest`, store the blob.

        Returns the blob's size.

        Raises:
            RangeInvalid: the last chunk is out of order; nothing changes.
            DigestInvalid: the bytes do not match `digest`; the last chunk is
                discarded and the session stays open.
            TooLarge: as for `append`.
        """
        async with self._hold(record.upload_id):
            record = await self.get(record.repository, record.upload_id)
            size = record.size
            if body is not None:
                self._check_range(record, content_range, content_length)
                size = await self._staged(record, body, content_length, digest)
                received = size - record.size
                if content_range is not None and received != content_range.length:
                    await self._undo(record)
                    raise RangeInvalid(
                        f"Content-Range declared {content_range.length} bytes, "
                        f"but {received} arrived; the chunk was discarded"
                    )
            try:
                actual = await self._digest_of(record.upload_id, size, digest.algorithm)
                if actual != digest.hex:
                    raise DigestInvalid(
                        f"digest {digest} does not match the {size} uploaded bytes "
                        f"({digest.algorithm}:{actual})"
                    )
            except BaseException:
                await self._undo(record)
                raise
            await self.driver.commit_upload(record.upload_id, str(digest))
            # Linking turns the session's reservation into stored bytes
            # (deduplicated) in one transaction, and checks the quotas again
            # for what the reservation did not cover: a blob the repository
            # held when the upload began may have been deleted since.
            try:
                await self.store.link_blob(
                    record.repository, str(digest), size, upload_id=record.upload_id,
                    subject=record.subject if record.subject != "anonymous" else None,
                    check=self.quotas.check if self.quotas is not None else None,
                )  # fmt: skip
            except BaseException:
                await self._unlinked(record, str(digest), size)
                raise
            self._forget(record.upload_id)
            return size

    async def _unlinked(self, record: UploadRecord, digest: str, size: int) -> None:
        """After a stored blob could not be linked: end the session, and
        record the blob so that garbage collection takes its file (a file
        with no row would never be collected)."""
        self._forget(record.upload_id)
        with contextlib.suppress(Exception):
            await self.store.delete_upload(record.upload_id)
            await self.store.write(
                lambda c: c.execute(
                    "INSERT INTO blobs VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (digest, size, time.time()),
                ),
                durable=False,
            )

    async def cancel(self, record: UploadRecord) -> None:
        async with self._hold(record.upload_id):
            await self._discard(record)

    async def _discard(self, record: UploadRecord) -> None:
        await self.store.delete_upload(record.upload_id)
        await self.driver.abort_upload(record.upload_id)
        self._forget(record.upload_id)

    async def put_monolithic(
        self,
        repository: str,
        digest: Digest,
        body: Body,
        content_length: int | None = None,
        owner: Owner = Owner(),
    ) -> int:
        """Store a whole blob sent in one request (POST with ?digest=)."""
        record = await self.start(repository, owner)
        try:
            return await self.finish(record, digest, body, None, content_length)
        except BaseException:
            with contextlib.suppress(BlobUploadUnknown):
                await self.cancel(record)
            raise

    async def purge_expired(self) -> int:
        """Delete sessions idle past `uploads.idle_seconds`, and their
        staged bytes; return how many this call removed."""
        for upload_id, size in list(self._unsettled.items()):
            await self.store.set_upload_size(upload_id, size, unless_moved_from=size)
            del self._unsettled[upload_id]
        before = time.time() - self.config.uploads.idle_seconds
        removed, after = 0, ""
        for _ in range(_PURGE_PAGES):
            page = self.store.expired_uploads(before, _PURGE_BATCH, after)
            for upload_id in page:
                # A session a request is streaming into is in use, however
                # long since its last chunk committed: leave it, and go on
                # past it (the next page starts after the last id seen).
                try:
                    async with self._hold(upload_id):
                        if await self.store.delete_expired_upload(upload_id, before):
                            with contextlib.suppress(PathNotFound):
                                await self.driver.abort_upload(upload_id)
                            self._forget(upload_id)
                            removed += 1
                except BlobUploadInvalid:
                    continue  # busy in another request
                except BlobUploadUnknown:
                    # Its staged file is gone (stored as a blob that could not
                    # be linked, say): the row alone is left to delete.
                    if await self.store.delete_expired_upload(upload_id, before):
                        self._forget(upload_id)
                        removed += 1
            if len(page) < _PURGE_BATCH:
                break
            after = page[-1]
        if removed:
            log.event(log.logger, 20, "expired upload sessions purged", count=removed)
        return removed

    # Steps

    def _check_range(
        self,
        record: UploadRecord,
        content_range: ChunkRange | None,
        content_length: int | None,
    ) -> None:
        if content_range is None:
            return
        if content_range.start != record.size:
            raise RangeInvalid(
                f"chunk starts at byte {content_range.start}, but the upload "
                f"has {record.size} bytes; send the chunk starting at {record.size}",
            )
        if content_length is not None and content_length != content_range.length:
            raise SizeInvalid(
                f"Content-Length {content_length} does not match Content-Range "
                f"{content_range.start}-{content_range.end}"
            )

    async def _stage(self, record: UploadRecord, body: AsyncIterator[bytes]) -> int:
        """Stream `body` after the committed bytes; return the new size."""
        upload_id = record.upload_id
        offset = record.size
        # Cut off the remains of a chunk that failed after being written.
        try:
            on_disk = await self.driver.upload_size(upload_id)
        except PathNotFound:
            raise BlobUploadUnknown(f"upload {upload_id} has no staged data") from None
        if on_disk != offset:
            await self.driver.truncate_upload(upload_id, offset)

        running = self._hashes.pop(upload_id, None)
        hasher = running[1] if running and running[0] == offset else None
        if hasher is None and offset == 0:
            hasher = hashlib.sha256()
        writer = _BatchWriter(self.driver, upload_id, offset, hasher)
        try:
            async for chunk in body:
                await writer.write(chunk)
            size = await writer.close()
        except BaseException:
            await writer.abandon()
            await self._undo(record)
            raise
        if hasher is not None:
            self._hashes[upload_id] = (size, hasher)
            self._trim_hashes()
        return size

    async def _undo(self, record: UploadRecord) -> None:
        self._forget(record.upload_id)
        # Back to the committed size, giving back what the chunk reserved.
        try:
            await self.store.set_upload_size(record.upload_id, record.size)
        except Exception:
            # The database could not take it (a full disk): until the purge
            # settles it, the chunk's reservation would hold space no byte
            # will fill.
            self._unsettled[record.upload_id] = record.size
            raise
        try:
            await self.driver.truncate_upload(record.upload_id, record.size)
        except PathNotFound:
            pass

    async def _digest_of(self, upload_id: str, size: int, algorithm: str) -> str:
        # The running hash stands for the file only while the file is exactly
        # the bytes it hashed; anything else (another writer, a lost lock) is
        # refused rather than trusted.
        on_disk = await self.driver.upload_size(upload_id)
        if on_disk != size:
            raise BlobUploadInvalid(
                f"upload {upload_id} holds {on_disk} bytes where {size} were "
                "committed; the session was changed by another writer"
            )
        running = self._hashes.get(upload_id)
        if algorithm == "sha256" and running is not None and running[0] == size:
            return running[1].hexdigest()
        hasher = hashlib.new(algorithm)
        async for chunk in self.driver.read_upload(upload_id):
            await asyncio.to_thread(hasher.update, chunk)
        return hasher.hexdigest()

    @contextlib.asynccontextmanager
    async def _hold(self, upload_id: str):
        """One request at a time per session, in this process (a lock) and
        across processes (the driver's lock); a client never needs two."""
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = self._locks[upload_id] = _SessionLock(self._locks, upload_id)
        if lock.locked():
            raise _busy(upload_id)
        async with lock:
            try:
                async with self.driver.lock_upload(upload_id):
                    yield
            except UploadBusy:
                raise _busy(upload_id) from None
            except PathNotFound:
                raise BlobUploadUnknown(f"upload {upload_id} is not open") from None

    def _forget(self, upload_id: str) -> None:
        self._hashes.pop(upload_id, None)

    def _trim_hashes(self) -> None:
        while len(self._hashes) > _RUNNING_HASHES_MAX:
            self._hashes.popitem(last=False)


class _StagingTooLarge(TooLarge):
    """One upload would pass a staging cap on its own."""


def _busy(upload_id: str) -> BlobUploadInvalid:
    return BlobUploadInvalid(
        f"upload {upload_id} is busy with another request; retry after it ends"
    )


class _SessionLock(asyncio.Lock):
    """A lock that removes itself from its table when released."""

    def __init__(self, table: dict, key: str):
        super().__init__()
        self._table = table
        self._key = key

    def release(self) -> None:
        super().release()
        if not self.locked() and self._table.get(self._key) is self:
            del self._table[self._key]


class _BatchWriter:
    """Gathers body chunks into batches; hashes and writes one batch while
    the next arrives. Chunks are passed on as a list, never joined: the
    driver writes them with one vectored call."""

    def __init__(self, driver: BlobDriver, upload_id: str, offset: int, hasher):
        self.driver = driver
        self.upload_id = upload_id
        self.offset = offset
        self.hasher = hasher
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.pending: asyncio.Future | None = None

    async def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.buffered += len(chunk)
        if self.buffered >= BATCH_BYTES:
            await self._flush()

    async def close(self) -> int:
        if self.chunks:
            await self._flush()
        if self.pending is not None:
            await self.pending
            self.pending = None
        return self.offset

    async def abandon(self) -> None:
        if self.pending is not None:
            try:
                await self.pending
            except Exception:
                pass
            self.pending = None

    async def _flush(self) -> None:
        if self.pending is not None:
            await self.pending
        chunks, self.chunks = self.chunks, []
        self.pending = asyncio.ensure_future(self._store(chunks, self.offset))
        self.offset += self.buffered
        self.buffered = 0

    async def _store(self, chunks: list[bytes], offset: int) -> None:
        if self.hasher is None:
            await self.driver.append_upload(self.upload_id, offset, chunks)
            return
        if sum(map(len, chunks)) <= INLINE_HASH_BYTES:
            _update(self.hasher, chunks)
            await self.driver.append_upload(self.upload_id, offset, chunks)
            return
        await asyncio.gather(
            asyncio.to_thread(_update, self.hasher, chunks),
            self.driver.append_upload(self.upload_id, offset, chunks),
        )


def _update(hasher, chunks: list[bytes]) -> None:
    for chunk in chunks:
        hasher.update(chunk)
