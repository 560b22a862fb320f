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
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from quaylock.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    RangeInvalid,
    SizeInvalid,
)
from quaylock.metadata.store import SQLiteStore, UploadRecord
from quaylock.oci import Digest, is_number
from quaylock.storage.driver import BlobDriver, PathNotFound, UploadBusy

BATCH_BYTES = 1024 * 1024
# Batches this small are hashed on the event loop (about 40 us for 64 KiB):
# a thread hop costs more.
INLINE_HASH_BYTES = 64 * 1024
_RUNNING_HASHES_MAX = 4096


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

    def __init__(self, driver: BlobDriver, store: SQLiteStore):
        self.driver = driver
        self.store = store
        # upload_id -> (committed offset, sha256 of bytes [0, offset))
        self._hashes: OrderedDict[str, tuple[int, object]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    async def start(self, repository: str) -> UploadRecord:
        upload_id = new_upload_id()
        await self.driver.start_upload(upload_id)
        await self.store.create_upload(upload_id, repository)
        self._hashes[upload_id] = (0, hashlib.sha256())
        self._trim_hashes()
        return UploadRecord(upload_id, repository, 0, 0.0, 0.0)

    async def get(self, repository: str, upload_id: str) -> UploadRecord:
        """Return the session, which must belong to `repository`.

        Raises:
            BlobUploadUnknown: no such session in this repository.
        """
        record = await self.store.get_upload(upload_id)
        if record is None or record.repository != repository:
            raise BlobUploadUnknown(
                f"upload {upload_id[:64]} is not open in {repository}"
            )
        return record

    async def append(
        self,
        record: UploadRecord,
        body: AsyncIterator[bytes],
        content_range: ChunkRange | None,
        content_length: int | None,
    ) -> int:
        """Append one chunk; return the session's new committed size.

        Raises:
            RangeInvalid: the chunk does not start where the session ends,
                or its length disagrees with its range. Nothing is written.
        """
        async with self._hold(record.upload_id):
            record = await self.get(record.repository, record.upload_id)
            self._check_range(record, content_range, content_length)
            size = await self._stage(record, body)
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
        body: AsyncIterator[bytes] | None,
        content_range: ChunkRange | None = None,
        content_length: int | None = None,
    ) -> int:
        """Apply an optional last chunk, verify `digest`, store the blob.

        Returns the blob's size.

        Raises:
            RangeInvalid: the last chunk is out of order; nothing changes.
            DigestInvalid: the bytes do not match `digest`; the last chunk is
                discarded and the session stays open.
        """
        async with self._hold(record.upload_id):
            record = await self.get(record.repository, record.upload_id)
            size = record.size
            if body is not None:
                self._check_range(record, content_range, content_length)
                size = await self._stage(record, body)
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
            await self.store.link_blob(
                record.repository, str(digest), size, upload_id=record.upload_id
            )
            self._forget(record.upload_id)
            return size

    async def cancel(self, record: UploadRecord) -> None:
        async with self._hold(record.upload_id):
            await self.store.delete_upload(record.upload_id)
            await self.driver.abort_upload(record.upload_id)
            self._forget(record.upload_id)

    async def put_monolithic(
        self, repository: str, digest: Digest, body: AsyncIterator[bytes]
    ) -> int:
        """Store a whole blob sent in one request (POST with ?digest=)."""
        record = await self.start(repository)
        try:
            return await self.finish(record, digest, body)
        except BaseException:
            await self.cancel(record)
            raise

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
