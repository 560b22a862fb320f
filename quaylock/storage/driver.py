"""The blob driver contract.

A driver stores two kinds of bytes: blobs, named by digest and never changed
once written, and upload sessions, named by upload id and appended to until
they are committed as a blob or aborted. It knows nothing of repositories,
manifests or policy; those live in the metadata store and the services.

The required surface is `BlobDriver`. Optional capabilities are separate
protocols that a driver may also satisfy; callers test for them with
`isinstance`:

- `LocalPaths`: the blob is a file on this machine, so the server may send it
  without copying it through Python (ASGI ``http.response.pathsend``).
- `Redirects`: the blob can be fetched from a URL the client may follow
  (a presigned object-store URL).

Contract for every driver, checked by one test suite run against each:

- `commit_upload` makes the blob visible only after its bytes are durable;
  a reader never sees a partial blob.
- Committing a blob that already exists is not an error: blobs are
  content-addressed, so the existing bytes are the same bytes.
- `truncate_upload` to the last committed size undoes a failed chunk.
- `lock_upload` excludes every other holder of the same session, in this
  process or another sharing the store, so two requests never write one
  session at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable


class DriverError(Exception):
    """A storage operation failed for a reason other than a missing object."""


class PathNotFound(DriverError):
    """The blob or upload session does not exist."""


class UploadBusy(DriverError):
    """Another request, maybe in another process, holds the session."""


@runtime_checkable
class BlobDriver(Protocol):
    async def blob_size(self, digest: str) -> int | None:
        """Return the stored size of `digest`, or None when absent."""

    def read_blob(
        self, digest: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Yield the bytes of `digest` from `offset`, `length` of them.

        Raises:
            PathNotFound: no such blob.
        """

    async def delete_blob(self, digest: str) -> None:
        """Remove a blob; absent blobs are not an error."""

    async def start_upload(self, upload_id: str) -> None:
        """Create an empty upload session."""

    async def append_upload(
        self, upload_id: str, offset: int, chunks: list[bytes]
    ) -> None:
        """Write `chunks`, in order, at `offset` of the session.

        Raises:
            PathNotFound: no such session.
        """

    def lock_upload(self, upload_id: str) -> AbstractAsyncContextManager[None]:
        """Hold the session for one request, across processes.

        Raises:
            UploadBusy: another request holds it.
            PathNotFound: no such session.
        """

    async def upload_size(self, upload_id: str) -> int:
        """Return the bytes staged in the session.

        Raises:
            PathNotFound: no such session.
        """

    async def truncate_upload(self, upload_id: str, size: int) -> None:
        """Cut the session back to `size` bytes (undo a failed chunk)."""

    def read_upload(self, upload_id: str) -> AsyncIterator[bytes]:
        """Yield the staged bytes, to hash them when no running hash exists."""

    async def commit_upload(self, upload_id: str, digest: str) -> None:
        """Make the staged bytes the durable blob `digest`; end the session.

        Raises:
            PathNotFound: no such session.
        """

    async def abort_upload(self, upload_id: str) -> None:
        """Delete the session and its bytes; absent sessions are not an error."""

    def list_uploads(self) -> list[str]:
        """Return the ids of sessions that have staged data."""


@runtime_checkable
class LocalPaths(Protocol):
    def blob_path(self, digest: str) -> str:
        """Return the file holding `digest` (which the caller knows exists)."""


@runtime_checkable
class Redirects(Protocol):
    async def blob_url(self, digest: str, expires_seconds: int) -> str | None:
        """Return a URL from which a client may GET the blob, or None."""
