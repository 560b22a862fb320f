"""The small HTTP toolkit the handlers share: a request view over the ASGI
scope, responses, and body streaming with a byte limit.

ASGI (https://asgi.readthedocs.io) hands us the scope and two callables; we
keep no framework between them and the handlers, because the manifest GET
path runs tens of thousands of times a second and every layer costs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from quaylock.errors import BlobUploadInvalid, RequestTimeout, SizeInvalid, TooLarge
from quaylock.oci import is_number
from quaylock.services.tags import Actor


class ClientDisconnected(Exception):
    """The client went away before its request body was complete."""


# Headers whose repeated lines are read as one comma-separated list.
_LIST_HEADERS = frozenset({"x-forwarded-for", "forwarded"})


class Request:
    """A read-only view of one ASGI HTTP request."""

    __slots__ = (
        "scope",
        "receive",
        "params",
        "_headers",
        "_query",
        "bytes_in",
        "body_done",
        "subject",
        "may_pull",
        "rights",
        "body_timeout",
        "body_min_rate",
        "client",
        "rate",
    )

    def __init__(self, scope: dict, receive, params: dict[str, str]):
        self.scope = scope
        self.receive = receive
        self.params = params
        self._headers: dict[str, str] | None = None
        self._query: dict[str, str] | None = None
        self.bytes_in = 0
        self.body_done = False
        # Who the request acts as, once authentication ran (policy.accounts),
        # and its pull right by repository name (None: authentication off).
        self.subject = None
        self.may_pull = None
        # The subject's actions on this request's repository (None: auth off).
        self.rights: frozenset[str] | None = None
        # Seconds the body may stall (None: forever), and the least average
        # bytes a second once that long has passed (0: no floor).
        self.body_timeout: float | None = None
        self.body_min_rate = 0
        # The client's address: the connection's peer, or what a trusted
        # proxy forwarded (policy.clients).
        self.client: str = (scope.get("client") or ("", 0))[0]
        # The rate limit's verdict once the request was charged to a bucket
        # (policy.ratelimit), for the RateLimit-* headers of the answer.
        self.rate = None

    @property
    def method(self) -> str:
        return self.scope["method"]

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            # Later duplicates win, but for the forwarding headers: a proxy
            # may add its own line rather than append to the client's, and
            # the lines in order are one list (RFC 9110, section 5.3).
            headers: dict[str, str] = {}
            for k, v in self.scope["headers"]:
                name, value = k.decode("latin-1"), v.decode("latin-1")
                if name in _LIST_HEADERS and name in headers:
                    value = f"{headers[name]}, {value}"
                headers[name] = value
            self._headers = headers
        return self._headers

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            raw = self.scope.get("query_string", b"").decode("latin-1")
            self._query = dict(parse_qsl(raw, keep_blank_values=True))
        return self._query

    def query_pairs(self) -> list[tuple[str, str]]:
        """Every query parameter in order, repeats kept (``scope`` repeats)."""
        raw = self.scope.get("query_string", b"").decode("latin-1")
        return parse_qsl(raw, keep_blank_values=True)

    def content_length(self) -> int | None:
        """Return the declared body length, or None when none was sent.

        Raises:
            SizeInvalid: the header is not a whole number.
        """
        value = self.headers.get("content-length")
        if value is None:
            return None
        if not is_number(value.strip()):
            raise SizeInvalid(f"Content-Length {value[:30]!r} is not a whole number")
        return int(value.strip())

    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip().lower()

    async def body_chunks(
        self, limit: int | None = None, setting: str = ""
    ) -> AsyncIterator[bytes]:
        """Yield the request body as it arrives.

        Args:
            limit: the most bytes allowed; the stream stops with TooLarge as
                soon as it is passed (before the bytes past it are used).
            setting: the configuration key of `limit`, for the message.

        Raises:
            TooLarge: the body is longer than `limit`.
            ClientDisconnected: the connection closed mid-body.
            BlobUploadInvalid: the body is shorter or longer than its
                Content-Length.
        """
        declared = self.content_length()
        named = f" ({setting})" if setting else ""
        if limit is not None and declared is not None and declared > limit:
            raise TooLarge(
                f"request body is {declared} bytes; the limit is {limit} bytes{named}",
                detail={"limit": limit, "size": declared},
            )
        received = 0
        started = time.monotonic()
        while True:
            message = await self._next_part(started, received)
            if message["type"] == "http.disconnect":
                self.body_done = True
                raise ClientDisconnected()
            chunk = message.get("body", b"")
            if chunk:
                received += len(chunk)
                self.bytes_in = received
                if limit is not None and received > limit:
                    raise TooLarge(
                        f"request body passed the limit of {limit} bytes{named}",
                        detail={"limit": limit, "size": received},
                    )
                yield chunk
            if not message.get("more_body", False):
                self.body_done = True
                break
        if declared is not None and received != declared:
            raise BlobUploadInvalid(
                f"body was {received} bytes, but Content-Length said {declared}"
            )

    async def drain(self, limit: int, timeout: float) -> None:
        """Read and drop what is left of the body, up to `limit` bytes.

        An error answered before the body was read (413, 416) is otherwise
        lost on clients that read nothing until they have sent everything;
        past the limit or the timeout the server closes the connection.
        """
        if self.body_done or (
            self.method in ("GET", "HEAD") and not self.content_length()
        ):
            return

        async def drop() -> None:
            left = limit
            while left > 0:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    return
                left -= len(message.get("body", b""))
                if not message.get("more_body", False):
                    return

        try:
            await asyncio.wait_for(drop(), timeout)
        except TimeoutError:
            pass
        self.body_done = True

    async def _next_part(self, started: float, received: int) -> dict:
        """The next ASGI body message, within the body's time limits.

        Raises:
            RequestTimeout: no byte came for `body_timeout` seconds, or the
                average rate fell below `body_min_rate` after that long.
        """
        if self.body_timeout is None:
            return await self.receive()
        elapsed = time.monotonic() - started
        if (
            self.body_min_rate
            and elapsed > self.body_timeout
            and received < self.body_min_rate * elapsed
        ):
            raise self._timed_out(
                f"the body arrived at {received / elapsed:.0f} bytes a second; "
                f"the least is {self.body_min_rate} "
                "(server.body_min_bytes_per_second)"
            )
        try:
            async with asyncio.timeout(self.body_timeout):
                return await self.receive()
        except TimeoutError:
            raise self._timed_out(
                f"no body bytes came for {self.body_timeout:g} s "
                "(server.body_timeout_seconds)"
            ) from None

    def _timed_out(self, why: str) -> RequestTimeout:
        # The rest of the body may still be on its way: close the connection
        # rather than read it.
        self.body_done = True
        error = RequestTimeout(f"{why}; what arrived of this request was discarded")
        error.headers["connection"] = "close"
        return error

    async def body(self, limit: int, setting: str = "") -> bytes:
        """Read the whole body, at most `limit` bytes (see `body_chunks`)."""
        parts = [chunk async for chunk in self.body_chunks(limit, setting)]
        return b"".join(parts)


def actor_of(request: Request) -> Actor:
    """Who acts, for tag rules and the audit log."""
    subject = request.subject.label if request.subject is not None else "anonymous"
    return Actor(
        subject=subject,
        client=request.client,
        user_agent=request.headers.get("user-agent", "")[:200] or None,
        tag_admin=request.rights is None or "tag-admin" in request.rights,
    )


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    # Stream these chunks instead of `body` (for blob bytes via Python).
    stream: AsyncIterator[bytes] | None = None
    # Or send this file with the server's zero-copy path.
    path: str | None = None
    # Content-Length for `stream` and `path` responses.
    length: int | None = None


def header(name: str, value: str) -> tuple[bytes, bytes]:
    return name.encode("latin-1"), value.encode("latin-1")


JSON = (b"content-type", b"application/json")
