"""Blob routes: end-2 (GET/HEAD /v2/<name>/blobs/<digest>) and end-10 (DELETE).

GET serves a byte range (RFC 9110 §14) when asked, and otherwise hands the
file to the server's zero-copy path where the driver and server allow it.
"""

from __future__ import annotations

from quaylock.api.http import Request, Response, header
from quaylock.errors import RangeInvalid
from quaylock.oci import Digest, is_number
from quaylock.services.registry import Registry
from quaylock.storage.driver import LocalPaths

OCTET_STREAM = (b"content-type", b"application/octet-stream")


async def get_blob(registry: Registry, request: Request) -> Response:
    name = request.params["name"]
    digest = Digest.parse(request.params["digest"])
    size = await registry.blob_size(name, digest)
    headers = [
        OCTET_STREAM,
        header("docker-content-digest", str(digest)),
        header("etag", f'"{digest}"'),
        (b"accept-ranges", b"bytes"),
        (b"cache-control", b"max-age=31536000"),
    ]
    if request.method == "HEAD":
        return Response(200, headers, length=size)

    range_header = request.headers.get("range")
    if range_header is not None:
        byte_range = parse_range(range_header, size)
        if byte_range is not None:
            start, end = byte_range
            headers.append(header("content-range", f"bytes {start}-{end}/{size}"))
            stream = registry.driver.read_blob(str(digest), start, end - start + 1)
            return Response(206, headers, stream=stream, length=end - start + 1)

    if isinstance(registry.driver, LocalPaths):
        return Response(
            200, headers, path=registry.driver.blob_path(str(digest)), length=size
        )
    return Response(
        200, headers, stream=registry.driver.read_blob(str(digest)), length=size
    )


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """Return the inclusive (start, end) of a single-range ``bytes=`` header.

    Returns None for a header we may ignore (another unit, several ranges):
    RFC 9110 §14.2 lets a server answer those with the whole content.

    Raises:
        RangeInvalid: the range cannot be satisfied (416, §15.5.17).
    """
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if (
        not sep
        or not (first == "" or is_number(first))
        or not (last == "" or is_number(last))
    ):
        return None
    if first == last == "":
        return None
    if first == "":
        # A suffix range: the last N bytes.
        length = min(int(last), size)
        if length == 0:
            raise _unsatisfiable(value, size)
        return size - length, size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # not a valid range: ignored, §14.1.1
    if start >= size:
        raise _unsatisfiable(value, size)
    end = int(last) if last else size - 1
    return start, min(end, size - 1)


def _unsatisfiable(value: str, size: int) -> RangeInvalid:
    error = RangeInvalid(f"range {value[:60]!r} is outside the blob's {size} bytes")
    error.headers["content-range"] = f"bytes */{size}"
    return error


async def delete_blob(registry: Registry, request: Request) -> Response:
    digest = Digest.parse(request.params["digest"])
    await registry.delete_blob(request.params["name"], digest)
    return Response(202)
