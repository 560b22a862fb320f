"""Slowing and locking password guessing.

Failed logins are counted per client address and per account at that
address, never per account alone: a lock on the account everywhere would
let anyone lock its owner out. After a few failures each further attempt
waits longer; past `limit` failures the key is locked for `lock_seconds`
and refused without a password check (so a flood costs no hashing).

The counts live in the same buckets as the rate limits
(policy.buckets): in this process with one worker, in the table every
worker maps with several, in Redis when `rate_limits.backend` is redis.
So a lock holds across workers and replicas. A key's failures are a
bucket of `limit` that refills over `lock_seconds`; its lock is a bucket
of one that refills over `lock_seconds`, emptied by the failure that
reaches the limit.

Only failures count. So that guesses sent in parallel cannot all pass the
lock check before any of them has failed, the checks under way for an
address count as failures-to-be while they run: a check starts only while
failures and checks under way together stay below `limit`; others wait
their turn and look at the lock again when it comes. The checks under way
are counted in each process, the failures everywhere: guesses that a
client spreads over several workers at the same moment can each pass in
their own process once, before the first of them has failed. Parallel
logins with the right password only queue for a moment: charging every
login as a failure until it succeeded locked out ten CI jobs starting
together behind one address.
"""

from __future__ import annotations

import asyncio
import contextlib

from quaylock.policy.buckets import LocalBuckets, Rate
from quaylock.policy.clients import address_key

# Failures that pass without delay; each one after doubles the delay.
_FREE_FAILURES = 3
_DELAY_CAP_SECONDS = 2.0
# How long a login waits for its turn before it is refused (429).
_TURN_SECONDS = 10.0
# How often a waiting login looks again at failures that other processes
# count (those in this process wake it at once).
_TURN_POLL_SECONDS = 0.25


class LoginBusy(Exception):
    """A login waited too long for its turn to be checked."""


class LoginLimiter:
    """Args:
    limit: failures before a key is locked.
    lock_seconds: how long a lock lasts; counts also reset after it.
    buckets: where the counts live: `LocalBuckets` (the default),
        `SharedBuckets` or `RedisBuckets` of policy.buckets.
    """

    def __init__(self, limit: int, lock_seconds: int, buckets=None):
        self.limit = limit
        self.lock_seconds = lock_seconds
        self.buckets = buckets if buckets is not None else LocalBuckets()
        self._failures_rate = Rate(limit / lock_seconds, limit)
        self._lock_rate = Rate(1 / lock_seconds, 1)
        # address key -> [condition, checks under way, logins waiting or checking]
        self._checks: dict[str, list] = {}

    @contextlib.asynccontextmanager
    async def turn(self, account: str, address: str):
        """Wait until a password check for `account` from `address` may
        start: while the failures so far and the checks under way stay
        below the limit. Yields the seconds the key stays locked: at once
        when it is, for the caller to refuse, else 0.

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
                locked = await self._wait_turn(account, address, where, slot)
                slot[1] += 1
            try:
                yield locked
            finally:
                async with condition:
                    slot[1] -= 1
                    condition.notify_all()
        finally:
            slot[2] -= 1
            if not slot[2]:
                del self._checks[where]

    async def _wait_turn(self, account: str, address: str, where: str, slot) -> float:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _TURN_SECONDS
        while True:
            if (locked := await self.locked_for(account, address)) > 0:
                return locked
            if await self._failures(f"@{where}") + slot[1] < self.limit:
                return 0.0
            left = deadline - loop.time()
            if left <= 0:
                raise LoginBusy()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot[0].wait(), min(left, _TURN_POLL_SECONDS))

    def _keys(self, account: str, address: str) -> list[str]:
        where = address_key(address)
        return [f"@{where}", f"{account}@{where}"]

    async def _failures(self, key: str) -> int:
        """Failures counted for `key` and not yet forgotten."""
        # A take of nothing reads the bucket without changing it.
        now = await self.buckets.take(f"login-failures:{key}", self._failures_rate, 0)
        return self.limit - now.remaining

    async def locked_for(self, account: str, address: str) -> float:
        """Seconds until this login may be tried again; 0 when it may now."""
        waits = [0.0]
        for key in self._keys(account, address):
            lock = await self.buckets.take(f"login-lock:{key}", self._lock_rate, 0)
            if not lock.remaining:
                waits.append(lock.reset)
        return max(waits)

    async def delay_for(self, account: str, address: str) -> float:
        """Seconds to hold this attempt before checking its password."""
        failures = await self._failures(f"{account}@{address_key(address)}")
        if failures < _FREE_FAILURES:
            return 0.0
        return min(_DELAY_CAP_SECONDS, 0.1 * 2 ** (failures - _FREE_FAILURES))

    async def failed(self, account: str, address: str) -> None:
        for key in self._keys(account, address):
            count = await self.buckets.take(
                f"login-failures:{key}", self._failures_rate, 1
            )
            if not count.allowed or not count.remaining:
                await self.buckets.take(f"login-lock:{key}", self._lock_rate, 1)

    async def succeeded(self, account: str, address: str) -> None:
        """Clear the account's count at this address."""
        # A negative take gives back: all of the bucket, whatever it held.
        key = f"login-failures:{account}@{address_key(address)}"
        await self.buckets.take(key, self._failures_rate, -self.limit)
