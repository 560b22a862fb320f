"""A strict decoder for the CBOR (RFC 8949) that COSE signature envelopes
use, and nothing more.

It reads definite-length items only: integers, byte and text strings,
arrays, maps with integer or text keys, tags, false, true and null.
Anything else (indefinite lengths, floats, undefined, other simple values,
duplicate map keys, invalid UTF-8, bytes after the item) is refused with
`CBORError` naming what and where. Depth and item counts are bounded, so a
hostile envelope costs at most linear time in its size.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_DEPTH = 16
MAX_ITEMS = 100_000


class CBORError(ValueError):
    """The input is not CBOR this decoder accepts."""


@dataclass(frozen=True, slots=True)
class Tagged:
    tag: int
    value: object


def decode(data: bytes) -> object:
    """Decode exactly one item that spans all of `data`.

    Raises:
        CBORError: saying what is wrong and at which byte offset.
    """
    decoder = _Decoder(memoryview(data))
    item = decoder.item(0)
    if decoder.pos != len(data):
        raise CBORError(f"{len(data) - decoder.pos} bytes follow the item")
    return item


def bstr_head(length: int) -> bytes:
    """The head of a byte string of `length` bytes (for building COSE's
    Sig_structure, which is then signed)."""
    return _head(2, length)


def tstr(text: str) -> bytes:
    raw = text.encode()
    return _head(3, len(raw)) + raw


def array_head(length: int) -> bytes:
    return _head(4, length)


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | info]) + value.to_bytes(size, "big")
    raise CBORError("length too large")


class _Decoder:
    def __init__(self, data: memoryview):
        self.data = data
        self.pos = 0
        self.items = 0

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise CBORError(f"item at byte {self.pos} runs past the end")
        chunk = bytes(self.data[self.pos : end])
        self.pos = end
        return chunk

    def _argument(self, info: int, at: int) -> int:
        if info < 24:
            return info
        if info in (24, 25, 26, 27):
            return int.from_bytes(self._take(1 << (info - 24)), "big")
        if info == 31:
            raise CBORError(f"indefinite length at byte {at} is not accepted")
        raise CBORError(f"reserved additional information {info} at byte {at}")

    def item(self, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise CBORError(f"nesting deeper than {MAX_DEPTH}")
        self.items += 1
        if self.items > MAX_ITEMS:
            raise CBORError(f"more than {MAX_ITEMS} items")
        at = self.pos
        (initial,) = self._take(1)
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            simple = {20: False, 21: True, 22: None}
            if info in simple:
                return simple[info]
            raise CBORError(f"simple value or float (info {info}) at byte {at}")
        value = self._argument(info, at)
        if major == 0:
            return value
        if major == 1:
            return -1 - value
        if major == 2:
            return self._take(value)
        if major == 3:
            raw = self._take(value)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CBORError(f"text string at byte {at} is not UTF-8") from None
        if major == 4:
            self._room_for(value, at)
            return [self.item(depth + 1) for _ in range(value)]
        if major == 5:
            self._room_for(2 * value, at)
            result: dict = {}
            for _ in range(value):
                key_at = self.pos
                key = self.item(depth + 1)
                if not isinstance(key, (int, str)) or isinstance(key, bool):
                    raise CBORError(
                        f"map key at byte {key_at} is not an integer or text"
                    )
                if key in result:
                    raise CBORError(f"map key {key!r} at byte {key_at} is repeated")
                result[key] = self.item(depth + 1)
            return result
        return Tagged(value, self.item(depth + 1))  # major 6

    def _room_for(self, count: int, at: int) -> None:
        # Every item takes at least one byte: refuse counts the input
        # cannot hold before allocating anything for them.
        if count > len(self.data) - self.pos:
            raise CBORError(f"container at byte {at} claims {count} items")
