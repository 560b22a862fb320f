"""Slowing and locking password guessing.

Failed logins are counted per client address and per account at that
address, never per account alone: a lock on the account everywhere would
let anyone lock its owner out. After a few failures each further attempt
waits longer; past `limit` failures the key is locked for `lock_seconds`
and refused without a password check (so a flood costs no hashing).

A login is charged as a failure before its password is checked, and given
back if it succeeds: guesses sent in parallel, all waiting for their hash,
would otherwise all pass the check before any failure was counted.

IPv6 addresses count by their /64, since one host usually holds a whole
/64 and could rotate through it.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass

# Keys remembered at the most; the oldest are forgotten first.
_MAX_KEYS = 100_000
# Failures that pass without delay; each one after doubles the delay.
_FREE_FAILURES = 3
_DELAY_CAP_SECONDS = 2.0


@dataclass(slots=True)
class _Entry:
    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


@functools.lru_cache(maxsize=65536)
def address_key(address: str) -> str:
    """The key an address counts under: itself, its IPv4 form when mapped,
    or its /64 for IPv6. Cached: every request asks."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginLimiter:
    """In-process counters.

    # TODO(#7): share the counters through Redis, so that several workers
    # or replicas lock together; today each process counts on its own, so
    # with N workers an address gets up to N times `limit` guesses.

    Args:
        limit: failures before a key is locked.
        lock_seconds: how long a lock lasts; counts also reset after it.
    """

    def __init__(self, limit: int, lock_seconds: int, clock=time.monotonic):
        self.limit = limit
        self.lock_seconds = lock_seconds
        self.clock = clock
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()

    def _keys(self, account: str, address: str) -> list[tuple]:
        where = address_key(address)
        return [("address", where), ("account", account, where)]

    def locked_for(self, account: str, address: str) -> float:
        """Seconds until this login may be tried again; 0 when it may now."""
        now = self.clock()
        waits = [
            entry.locked_until - now
            for key in self._keys(account, address)
            if (entry := self._entries.get(key)) is not None
        ]
        return max([0.0, *waits])

    def delay_for(self, account: str, address: str) -> float:
        """Seconds to hold this attempt before checking its password."""
        entry = self._entries.get(("account", account, address_key(address)))
        if entry is None or entry.failures < _FREE_FAILURES:
            return 0.0
        return min(_DELAY_CAP_SECONDS, 0.1 * 2 ** (entry.failures - _FREE_FAILURES))

    def failed(self, account: str, address: str) -> None:
        now = self.clock()
        for key in self._keys(account, address):
            entry = self._entries.pop(key, None) or _Entry()
            if entry.last_failure and now - entry.last_failure > self.lock_seconds:
                entry = _Entry()
            entry.failures += 1
            entry.last_failure = now
            if entry.failures >= self.limit:
                entry.locked_until = now + self.lock_seconds
            self._entries[key] = entry
        while len(self._entries) > _MAX_KEYS:
            self._entries.popitem(last=False)

    def succeeded(self, account: str, address: str) -> None:
        """Undo the failure charged by `failed` before the check, and clear
        the account's count at this address."""
        where = address_key(address)
        self._entries.pop(("account", account, where), None)
        entry = self._entries.get(("address", where))
        if entry is not None and entry.failures > 0:
            entry.failures -= 1
