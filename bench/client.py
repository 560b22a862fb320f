"""A lean HTTP/1.1 client for the benchmark's load generators.

The benchmark measures servers, so the client must cost as little CPU as
possible: on a two-core machine every microsecond the client spends is taken
from the server under test. `http.client` parses each response's headers with
the `email` package, which costs several times more than the request itself
for a HEAD or a small PUT; this client keeps one socket open (keep-alive),
writes each request with one `sendall`, and parses only what it needs:
the status, the headers as a dict and a body framed by Content-Length or
chunked encoding (RFC 9112 §6-7).

Large bodies never sit in memory whole: uploads are read from a file into a
reused buffer and sent chunk by chunk, downloads are received into a reused
buffer and handed to a callback (the sha256 check).

A connection may carry one ``Authorization`` header, sent with every request
as a production client sends its bearer token; it is part of the fixed
lines of the request head, so it costs no extra work per request.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

RECV_BYTES = 256 * 1024


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 we can read, or it closed early."""


class UnexpectedStatus(Exception):
    """A request got a status other than the one the workload expects."""


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """One keep-alive connection to ``host:port``.

    Args:
        host: the server's address (loopback only in this benchmark).
        port: the server's port.
        timeout: seconds any one socket operation may take.
        authorization: the value of an ``Authorization`` header to send with
            every request (``Bearer <token>``), or None to send none.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 60.0,
        authorization: str | None = None,
    ):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.pending = bytearray()
        # Sent with every request, prepared ones included.
        self.fixed_lines = f"Host: {host}:{port}\r\n"
        if authorization is not None:
            self.fixed_lines += f"Authorization: {authorization}\r\n"

    def connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending.clear()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def head_bytes(
        self, method: str, target: str, headers: dict[str, str], length: int | None
    ) -> bytes:
        """Return the request line and headers, ready to send."""
        lines = [f"{method} {target} HTTP/1.1\r\n", self.fixed_lines]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        if length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        expect: int | tuple[int, ...] = 200,
    ) -> Response:
        """Send one request with an in-memory body; return the answer.

        Raises:
            UnexpectedStatus: the status is not `expect`.
            ProtocolError: the answer cannot be read.
        """
        send_length = len(body) if body or method in ("POST", "PUT", "PATCH") else None
        data = self.head_bytes(method, target, headers or {}, send_length)
        self._sendall(data + body if body else data)
        return self._checked(method, target, expect)

    def send_file(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        file,
        length: int,
        buffer: bytearray,
        expect: int | tuple[int, ...],
    ) -> Response:
        """Send `length` bytes read from `file` as the body, in chunks of
        `len(buffer)`, reusing `buffer` for every read."""
        self._sendall(self.head_bytes(method, target, headers, length))
        view = memoryview(buffer)
        left = length
        while left:
            n = file.readinto(view[: min(left, len(view))])
            if not n:
                raise ProtocolError(f"file ended with {left} bytes still to send")
            self._sendall(view[:n])
            left -= n
        return self._checked(method, target, expect)

    def download(
        self,
        target: str,
        headers: dict[str, str],
        buffer: bytearray,
        sink: Callable[[memoryview], None],
    ) -> int:
        """GET `target`, passing the body to `sink` one full `buffer` at a
        time; return the body's length.

        Raises:
            UnexpectedStatus: the status is not 200.
        """
        self._sendall(self.head_bytes("GET", target, headers, None))
        status, response_headers = self._read_head()
        length = response_headers.get("content-length")
        if status != 200 or length is None:
            self._read_body("GET", status, response_headers)
            raise UnexpectedStatus(f"GET {target}: status {status}, expected 200")
        left = int(length)
        view = memoryview(buffer)
        filled = min(len(self.pending), left, len(view))
        view[:filled] = self.pending[:filled]
        del self.pending[:filled]
        left -= filled
        while left:
            if filled == len(view):
                sink(view)
                filled = 0
            n = self.sock.recv_into(view[filled : filled + left])
            if not n:
                raise ProtocolError("connection closed in the middle of a body")
            filled += n
            left -= n
        if filled:
            sink(view[:filled])
        return int(length)

    def send_prepared(self, data: bytes, method: str, expect: int) -> int:
        """Send request bytes built once by `head_bytes` (the HEAD loop sends
        the same few requests thousands of times); return the status.

        Raises:
            UnexpectedStatus: the status is not `expect`.
        """
        self._sendall(data)
        status, headers = self._read_head()
        self._read_body(method, status, headers)
        if status != expect:
            raise UnexpectedStatus(f"{method}: status {status}, expected {expect}")
        return status

    # Steps

    def _sendall(self, data) -> None:
        if self.sock is None:
            self.connect()
        self.sock.sendall(data)

    def _checked(self, method: str, target: str, expect) -> Response:
        status, headers = self._read_head()
        body = self._read_body(method, status, headers)
        wanted = expect if isinstance(expect, tuple) else (expect,)
        if status not in wanted:
            raise UnexpectedStatus(
                f"{method} {target[:120]}: status {status}, expected "
                f"{'/'.join(map(str, wanted))}: {body[:300]!r}"
            )
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, body)

    def _fill(self) -> None:
        chunk = self.sock.recv(RECV_BYTES)
        if not chunk:
            raise ProtocolError("connection closed before the answer was complete")
        self.pending += chunk

    def _read_head(self) -> tuple[int, dict[str, str]]:
        while True:
            end = self.pending.find(b"\r\n\r\n")
            if end >= 0:
                break
            self._fill()
        lines = bytes(self.pending[:end]).decode("latin-1").split("\r\n")
        del self.pending[: end + 4]
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def _read_body(self, method: str, status: int, headers: dict[str, str]) -> bytes:
        # RFC 9112 §6.3: no body after HEAD, 1xx, 204 and 304, whatever
        # Content-Length says.
        if method == "HEAD" or status in (204, 304) or status < 200:
            return b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(headers.get("content-length", "0"))
        while len(self.pending) < length:
            self._fill()
        body = bytes(self.pending[:length])
        del self.pending[:length]
        return body

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            while (end := self.pending.find(b"\r\n")) < 0:
                self._fill()
            size = int(bytes(self.pending[:end]).split(b";", 1)[0], 16)
            del self.pending[: end + 2]
            while len(self.pending) < size + 2:
                self._fill()
            parts.append(bytes(self.pending[:size]))
            del self.pending[: size + 2]
            if size == 0:
                # Trailers are not used by either server; the empty chunk
                # is followed by the final CRLF, consumed above.
                return b"".join(parts)


def upload_target(location: str) -> str:
    """Turn an upload Location (absolute URL or path) into a request target,
    keeping its query: Distribution keeps session state there."""
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def with_digest(target: str, digest: str) -> str:
    return f"{target}{'&' if '?' in target else '?'}digest={digest}"
