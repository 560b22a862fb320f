"""Buckets that count requests (rate limits) and failed logins.

Each bucket follows the generic cell rate algorithm (GCRA): it keeps one
number, the theoretical arrival time (TAT) at which it would be empty
again. A request costing `cost` moves the TAT on by `cost / per_second`
seconds; it is refused when that would put the TAT more than
`burst / per_second` seconds ahead of now. That is a token bucket of
`burst` tokens refilled at `per_second`, kept in one float, so a bucket
can live in shared memory or in one Redis key.

`SharedBuckets` keeps buckets in a memory-mapped file that every worker
process of one server maps, so the limits hold across workers with no
server to run. The file is a hash table of fixed size: a key goes to one
of `_PROBES` slots after its keyed hash (the hash key is random per file,
so nobody can aim keys at another's slots); a slot whose TAT has passed
is as good as empty, since an empty bucket and a full one behave the
same. When all the slots a key may use hold live buckets, the one closest
to empty gives way: the newcomer starts full, which costs the limits a
little precision under a flood of distinct keys and never lets one key
pass its own rate by more than one burst. Slots are guarded by POSIX
record locks on stripes of the file, one system call to take and one to
release.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Rate:
    """`per_second` sustained, `burst` at once."""

    per_second: float
    burst: int

    @property
    def interval(self) -> float:
        return 1.0 / self.per_second


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    # For the RateLimit-* headers: the burst, what is left of it, and the
    # seconds until the bucket is full again.
    limit: int
    remaining: int
    reset: float
    # Seconds until this request would pass; 0 when it did.
    retry_after: float


def gcra(tat: float, now: float, rate: Rate, cost: int) -> tuple[float, Verdict]:
    """Apply a request of `cost` to a bucket whose TAT is `tat`; return the
    new TAT (the old one when refused) and the verdict. A cost of 0 reads
    the bucket; a negative one gives back, never past a full bucket."""
    tat = max(tat, now)
    new_tat = tat + cost * rate.interval
    allowed = new_tat - rate.interval * rate.burst <= now + 1e-9
    after = new_tat if allowed else tat
    return after, verdict(allowed, after, now, rate, cost)


def verdict(allowed: bool, tat: float, now: float, rate: Rate, cost: int) -> Verdict:
    """The verdict on a request, from the bucket's TAT after it (the same
    TAT when it was refused)."""
    interval = rate.interval
    tolerance = interval * rate.burst
    left = max(0, math.floor((now - (tat - tolerance)) / interval + 1e-9))
    retry = 0.0 if allowed else tat + cost * interval - tolerance - now
    return Verdict(allowed, rate.burst, left, max(0.0, tat - now), max(0.0, retry))


# Table layout: a header (magic, hash key), then slots of (key digest,
# TAT); a digest of 0 marks a slot never used.
_MAGIC = b"qlrate01"
_HEADER = 64
_SLOT = struct.Struct("<Qd")
_PROBES = 8
_STRIPES = 256


class LocalBuckets:
    """Buckets in this process's memory, for a server of one worker: no
    file, no lock. The least recently used key goes first when `keys` are
    held."""

    def __init__(self, keys: int = 1 << 16, clock=time.time):
        self.keys = keys
        self.clock = clock
        self._tats: OrderedDict[str, float] = OrderedDict()

    async def take(self, key: str, rate: Rate, cost: int = 1) -> Verdict:
        return self.take_now(key, rate, cost)

    def take_now(self, key: str, rate: Rate, cost: int = 1) -> Verdict:
        tats = self._tats
        tat, result = gcra(tats.pop(key, 0.0), self.clock(), rate, cost)
        tats[key] = tat
        if len(tats) > self.keys:
            tats.popitem(last=False)
        return result


class SharedBuckets:
    """Buckets in a memory-mapped file shared by the workers of a server.

    Args:
        path: the table file; created (with a new hash key) when missing or
            of another size.
        slots: how many buckets the table holds.
        clock: seconds, the same in every process (wall time).
    """

    def __init__(self, path: Path, slots: int = 1 << 16, clock=time.time):
        self.slots = slots
        self.clock = clock
        size = _HEADER + slots * _SLOT.size
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, _HEADER, 0)
            try:
                header = os.pread(fd, _HEADER, 0)
                if os.fstat(fd).st_size != size or not header.startswith(_MAGIC):
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, size)
                    os.pwrite(fd, _MAGIC + os.urandom(32), 0)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, _HEADER, 0)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        # Stripe locks are single bytes past the table's end (a record lock
        # may lie beyond the end of a file).
        self._lock_base = size
        self._hash_key = bytes(self._map[len(_MAGIC) : len(_MAGIC) + 32])

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    async def take(self, key: str, rate: Rate, cost: int = 1) -> Verdict:
        return self.take_now(key, rate, cost)

    def take_now(self, key: str, rate: Rate, cost: int = 1) -> Verdict:
        """Charge `cost` requests to the bucket of `key`."""
        digest = (
            int.from_bytes(
                hashlib.blake2b(
                    key.encode(), digest_size=8, key=self._hash_key
                ).digest(),
                "little",
            )
            or 1
        )
        first = digest % self.slots
        # The probe window may wrap past the table's end: lock its stripes
        # in order, so two processes never wait on each other.
        stripes = sorted({self._stripe(first), self._stripe(first + _PROBES - 1)})
        for stripe in stripes:
            self._lock(stripe, fcntl.LOCK_EX)
        try:
            now = self.clock()
            slot = self._find(first, digest, now)
            offset = _HEADER + slot * _SLOT.size
            held, tat = _SLOT.unpack_from(self._map, offset)
            if held != digest:
                tat = 0.0
            tat, verdict = gcra(tat, now, rate, cost)
            _SLOT.pack_into(self._map, offset, digest, tat)
            return verdict
        finally:
            for stripe in reversed(stripes):
                self._lock(stripe, fcntl.LOCK_UN)

    def _find(self, first: int, digest: int, now: float) -> int:
        """The slot of `digest`, or the one it may take."""
        spare, spare_tat = None, math.inf
        for i in range(_PROBES):
            slot = (first + i) % self.slots
            held, tat = _SLOT.unpack_from(self._map, _HEADER + slot * _SLOT.size)
            if held == digest:
                return slot
            # Empty, or a bucket that has refilled: free. Otherwise the
            # live bucket nearest to refilled gives way, if it must.
            free_at = -math.inf if held == 0 or tat <= now else tat
            if free_at < spare_tat:
                spare, spare_tat = slot, free_at
        return spare

    def _stripe(self, slot: int) -> int:
        return (slot % self.slots) * _STRIPES // self.slots

    def _lock(self, stripe: int, how: int) -> None:
        fcntl.lockf(self._fd, how, 1, self._lock_base + stripe)


# GCRA in Redis, atomically. Redis's clock decides, so replicas whose clocks
# differ still agree. Times go back as text: Redis turns Lua numbers into
# integers.
_GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + cost * interval
if new_tat - interval * tonumber(ARGV[2]) > now + 1e-9 then
  return {0, tostring(tat), tostring(now)}
end
redis.call('SET', KEYS[1], string.format('%.6f', new_tat),
           'PX', math.max(1000, math.ceil((new_tat - now) * 1000) + 1000))
return {1, string.format('%.6f', new_tat), string.format('%.6f', now)}
"""


# Seconds a process uses its own buckets after Redis failed it.
_REDIS_RETRY_SECONDS = 5.0


class RedisBuckets:
    """Buckets in Redis, shared by every worker of every replica.

    When Redis cannot be reached, each process falls back to `fallback`
    (the server's shared-memory buckets), so limits still hold per
    replica, and says so in the log at most once a minute.

    Args:
        url: ``redis://host:port/db``.
        fallback: the buckets to use meanwhile.
    """

    def __init__(self, url: str, fallback: SharedBuckets, timeout: float = 0.5):
        import redis.asyncio as redis  # noqa: PLC0415 - only with this backend

        self._errors = (redis.RedisError, OSError, TimeoutError)
        self._client = redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._script = self._client.register_script(_GCRA_SCRIPT)
        self._fallback = fallback
        self._warned_at = -math.inf
        # After a failure, Redis is left alone for a while: a Redis that
        # hangs would otherwise add its timeout to every request.
        self._down_until = -math.inf

    async def take(self, key: str, rate: Rate, cost: int = 1) -> Verdict:
        if time.monotonic() < self._down_until:
            return self._fallback.take_now(key, rate, cost)
        try:
            allowed, tat, now = await self._script(
                keys=[f"quaylock:rate:{key}"],
                args=[repr(rate.interval), rate.burst, cost],
            )
        except self._errors as exc:
            self._down_until = time.monotonic() + _REDIS_RETRY_SECONDS
            if time.monotonic() - self._warned_at > 60:
                self._warned_at = time.monotonic()
                from quaylock import log  # noqa: PLC0415 - only on this path

                log.event(
                    log.logger, 30, "rate limits: redis unreachable, limits are "
                    "per replica until it is back", detail=str(exc)[:200],
                )  # fmt: skip
            return self._fallback.take_now(key, rate, cost)
        return verdict(bool(allowed), float(tat), float(now), rate, cost)

    async def close(self) -> None:
        await self._client.aclose()


class Leases:
    """Takes requests from shared buckets a few at a time, and hands them
    out in this process without a lock or a round trip.

    Each take from `SharedBuckets` costs two record-lock system calls, and
    from `RedisBuckets` a round trip; with two workers those took manifest
    GETs from 27-31k to 18-21k requests a second. Leasing `lease` requests
    with one take makes that cost once per lease. A lease is charged to the
    shared bucket when taken, so the limit is never passed; what a process
    leased and has not used yet counts as spent meanwhile, which can refuse
    a client up to (workers x lease) requests early. Unused requests go back
    with the next take, and a lease lasts `seconds` at most. Buckets whose
    burst is under 16 times `lease_max` lease less, and those under 16
    lease nothing: small limits stay exact.

    Args:
        buckets: `SharedBuckets` or `RedisBuckets`.
        lease_max: requests leased at once, at most.
        seconds: how long a lease may be held.
    """

    def __init__(self, buckets, lease_max: int = 16, seconds: float = 1.0,
                 keys: int = 1 << 16, clock=time.monotonic):  # fmt: skip
        self.buckets = buckets
        self.lease_max = lease_max
        self.seconds = seconds
        self.keys = keys
        self.clock = clock
        # key -> [rate, requests left, expires at, verdict when leased]
        self._held: dict[str, list] = {}

    async def take(self, key: str, rate: Rate, cost: int = 1) -> Verdict:
        lease = min(self.lease_max, rate.burst // 16)
        if lease < 1 or cost < 1:
            return await self.buckets.take(key, rate, cost)
        now = self.clock()
        held = self._held.get(key)
        leftover = 0
        if held is not None and held[0] == rate and held[2] > now:
            if held[1] >= cost:
                held[1] -= cost
                leased = held[3]
                return Verdict(
                    True, leased.limit, leased.remaining + held[1], leased.reset, 0.0
                )
            # What is left of a lease still running was charged and is this
            # process's to use. A lease past its time gives nothing back:
            # the bucket may have refilled since, and would count it twice.
            leftover = held[1]
        # A new lease, net of what the last one left unused.
        result = await self.buckets.take(key, rate, cost + lease - leftover)
        if result.allowed:
            self._held.pop(key, None)
            self._held[key] = [rate, lease, now + self.seconds, result]
            if len(self._held) > self.keys:
                del self._held[next(iter(self._held))]
            return Verdict(
                True, result.limit, result.remaining + lease, result.reset, 0.0
            )
        # No room for a lease: this request alone, with what was left.
        self._held.pop(key, None)
        return await self.buckets.take(key, rate, cost - leftover)
