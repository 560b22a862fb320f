"""Quotas on stored bytes per repository, namespace and user.

Checks run inside the write transaction that reserves or links the bytes
(`metadata.usage`), so two uploads racing for the last bytes of a quota
cannot both pass: the second sees the first's reservation.
"""

from __future__ import annotations

from quaylock.config import QuotasConfig, quota_for
from quaylock.errors import Denied
from quaylock.metadata import usage


class QuotaGuard:
    """Args:
    config: the `quotas` section.
    """

    def __init__(self, config: QuotasConfig):
        self.config = config
        self.enabled = bool(
            config.repository_max_bytes
            or config.namespace_max_bytes
            or config.user_max_bytes
            or config.overrides
        )

    def check(
        self,
        c,
        repository: str,
        subject: str | None,
        wanted: dict,
        own: dict | None = None,
    ) -> None:
        """`own`: what the upload asking has reserved already, by scope (it
        counts like everyone's, but the message tells it apart).

        Raises:
            Denied: `wanted` more bytes (by scope) would pass a quota; the
                message names the quota, its size and its current use."""
        if not self.enabled:
            return
        names = {
            "repository": repository,
            "namespace": usage.namespace_of(repository),
            "user": usage.user_of(c, subject),
        }
        for scope, name in names.items():
            extra = wanted.get(scope, 0)
            if name is None or extra <= 0:
                continue
            quota, source = quota_for(self.config, scope, name)
            if not quota:
                continue
            stored = usage.used(c, scope, name)
            pending = usage.reserved(c, scope, name)
            if stored + pending + extra > quota:
                mine = (own or {}).get(scope, 0)
                holds = f" (it holds {mine} already)" if mine else ""
                raise _quota_error(
                    f"{scope} {name} would pass its quota of {quota} bytes "
                    f"({source}): it stores {stored} bytes, other uploads in "
                    f"progress reserve {pending - mine}, and this one needs "
                    f"{extra} more{holds}",
                    detail={"quota": quota, "stored": stored, "reserved": pending},
                )

    def usage_report(self, store) -> list[dict]:
        """Use against quota for everything that stores bytes."""
        report = []
        for scope, name, stored in store.quota_usage():
            quota, source = quota_for(self.config, scope, name)
            report.append(
                {"scope": scope, "name": name, "bytes": stored,
                 "quota": quota or None, "setting": source if quota else None}
            )  # fmt: skip
        return report


def _quota_error(message: str, detail: dict) -> Denied:
    error = Denied(message, detail=detail)
    error.reason = "quota"
    return error
