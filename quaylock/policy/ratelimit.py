"""Rate limits: one bucket (policy.buckets) per class of request and
subject or client address."""

from __future__ import annotations

import math

from quaylock.errors import TooManyRequests
from quaylock.policy.access import subject_matches
from quaylock.policy.accounts import ANONYMOUS
from quaylock.policy.buckets import Rate, Verdict
from quaylock.policy.clients import address_in, address_key, networks


class RateLimiter:
    """Which rate applies to a request, and whether its bucket has room.

    Requests with credentials count per subject; requests without them (and
    logins at the token endpoint, which carry a password to check) count
    per client address, IPv6 by /64.

    Args:
        config: the `rate_limits` section.
        buckets: `SharedBuckets` or `RedisBuckets`.
    """

    def __init__(self, config, buckets):
        self.config = config
        self.buckets = buckets
        self._overrides = [
            (i, o, networks(o["addresses"]) if "addresses" in o else None)
            for i, o in enumerate(config.overrides)
        ]
        # Each class's own rate, worked out once: most requests match no
        # override.
        self._defaults = {
            name: (
                _rate(getattr(config, name).per_minute, getattr(config, name).burst),
                f"rate_limits.{name}",
            )
            for name in ("read", "write", "token", "listing")
        }

    def rate_for(
        self, rate_class: str, subject, address: str
    ) -> tuple[Rate | None, str]:
        """The rate for `subject` (None: no credentials) at `address`, and
        the setting it comes from; None when unlimited."""
        for i, override, nets in self._overrides:
            if override["class"] not in ("*", rate_class):
                continue
            if nets is not None:
                if not address_in(address, nets):
                    continue
            elif rate_class == "token":
                # Logins count per address, whoever they claim to be: a
                # subjects override (even one for anonymous, of class *)
                # never lifts them.
                continue
            elif not any(
                subject_matches(s, subject or ANONYMOUS) for s in override["subjects"]
            ):
                continue
            return _rate(override["per_minute"], override.get("burst", 0)), (
                f"rate_limits.overrides[{i}]"
            )
        return self._defaults[rate_class]

    async def admit(
        self, rate_class: str, subject, address: str, cost: int = 1
    ) -> Verdict | None:
        """Charge a request; None when no limit applies.

        Raises:
            TooManyRequests: the bucket is empty; with Retry-After and the
                RateLimit-* headers.
        """
        rate, source = self.rate_for(rate_class, subject, address)
        if rate is None:
            return None
        if subject is not None and subject.kind != "anonymous":
            who, key = subject.label, f"{rate_class}:{subject.label}"
        else:
            where = address_key(address)
            who, key = f"client {where}", f"{rate_class}@{where}"
        result = await self.buckets.take(key, rate, min(cost, rate.burst))
        if not result.allowed:
            error = TooManyRequests(
                f"{who} is over the rate limit for {rate_class} requests: "
                f"{round(rate.per_second * 60)} a minute, {rate.burst} at once "
                f"({source}); retry in {math.ceil(result.retry_after)} s"
            )
            error.reason = "rate_limit"
            error.headers.update(headers(result))
            error.headers["Retry-After"] = str(max(1, math.ceil(result.retry_after)))
            raise error
        return result


def headers(result: Verdict) -> dict[str, str]:
    """The RateLimit-* response headers for a verdict."""
    return {
        "RateLimit-Limit": str(result.limit),
        "RateLimit-Remaining": str(result.remaining),
        "RateLimit-Reset": str(math.ceil(result.reset)),
    }


def _rate(per_minute: int, burst: int) -> Rate | None:
    return Rate(per_minute / 60.0, burst) if per_minute else None
