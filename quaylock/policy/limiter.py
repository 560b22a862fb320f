"""Slowing and locking password guessing.

Failed logins are counted per client address and per account at that
address, never per account alone: a lock on the account everywhere would
let anyone lock its owner out. After a few failures each further attempt
waits longer; past `limit` failures the key is locked for `lock_seconds`
and refused without a password check (so a flood costs no hashing).

Only failures count. So that guesses sent in parallel cannot all pass the
lock check before any of them has failed, the checks under way for an
address count as failures-to-be while they run: a check starts only while
failures and checks under way together stay below `limit`; others wait
their turn (in this process) and look at the lock again when it comes.
Parallel logins with the right password only queue for a moment:
charging every login as a failure until it succeeded locked out ten CI
jobs starting together behind one address.

IPv6 addresses count by their /64, since one host usually holds a whole
/64 and could rotate through it.
"""

from __future__ import annotations

import asyncio
import contextlib
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
# How long a login waits for its turn before it is refused (429).
_TURN_SECONDS = 10.0


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


class LoginBusy(Exception):
    """A login waited too long for its turn to be checked."""


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
        # address key -> [condition, checks under way, logins waiting or checking]
        self._checks: dict[str, list] = {}

    @contextlib.asynccontextmanager
    async def turn(self, account: str, address: str):
        """Wait until a password check for `account` from `address` may
        start: while the failures so far and the checks under way stay
        below the limit. Returns at once when the key is locked, for the
        caller to refuse.

        Raises:
            LoginBusy: no turn came in `_TURN_SECONDS`.
        """
        where = address_key(address)
        slot = self._checks.get(where)
        if slot is None:
            slot = self._checks[where] = [asyncio.Condition(), 0, 0]
        condition = slot[0]
        slot[2] += 1
        try:
            async with condition:
                try:
                    await asyncio.wait_for(
                        condition.wait_for(
                            lambda: (
                                self.locked_for(account, address) > 0
                                or self._failures(where) + slot[1] < self.limit
                            )
                        ),
                        _TURN_SECONDS,
                    )
                except TimeoutError:
                    raise LoginBusy() from None
                slot[1] += 1
            try:
                yield
            finally:
                async with condition:
                    slot[1] -= 1
                    condition.notify_all()
        finally:
            slot[2] -= 1
            if not slot[2]:
                del self._checks[where]

    def _failures(self, where: str) -> int:
        entry = self._entries.get(("address", where))
        if entry is None:
            return 0
        if entry.last_failure and self.clock() - entry.last_failure > self.lock_seconds:
            return 0
        return entry.failures

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
        """Clear the account's count at this address."""
        self._entries.pop(("account", account, address_key(address)), None)
