"""Webhooks: JSON events on tag moves and refusals, signed, never blocking.

An event is queued after the change it reports is committed; a queue per
process (bounded: a slow or dead receiver costs memory up to the bound,
then events are dropped and logged) feeds one delivery task. Each POST
carries:

- ``X-Quaylock-Event``: the action (``tag.move``, ``refused``, ...);
- ``X-Quaylock-Delivery``: a random id, the same on every retry;
- ``X-Quaylock-Signature: sha256=<hex>``: HMAC-SHA256 of the body with the
  webhook's secret, so the receiver can tell our events from forgeries.

A delivery that fails (connection error, or a status other than 2xx) is
retried after 1, 2, 4 and 8 seconds, then dropped and logged. Requests
never wait for any of this.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path

from quaylock import log
from quaylock.config import Webhook
from quaylock.metadata.audit import AuditEvent

QUEUE_MAX = 1000
RETRY_DELAYS = (1, 2, 4, 8)


class Webhooks:
    def __init__(self, hooks: list[Webhook]):
        self.hooks = [
            (hook, Path(hook.secret_file).read_bytes().strip()) for hook in hooks
        ]
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self.dropped = 0

    def emit(self, event: AuditEvent) -> None:
        """Queue `event` for every webhook that wants it; never waits."""
        if not self.hooks:
            return
        if self._queue is None:
            self._queue = asyncio.Queue(QUEUE_MAX)
            self._task = asyncio.get_running_loop().create_task(self._deliver_all())
        body = json.dumps({"time": time.time(), **asdict(event)}).encode()
        for hook, secret in self.hooks:
            if event.action not in hook.events:
                continue
            try:
                self._queue.put_nowait((hook, secret, event.action, body))
            except asyncio.QueueFull:
                self.dropped += 1
                log.event(
                    log.logger,
                    30,
                    "webhook queue full; event dropped",
                    url=_safe(hook.url),
                )

    async def _deliver_all(self) -> None:
        assert self._queue is not None
        while True:
            hook, secret, action, body = await self._queue.get()
            asyncio.get_running_loop().create_task(
                self._deliver(hook, secret, action, body)
            )

    async def _deliver(
        self, hook: Webhook, secret: bytes, action: str, body: bytes
    ) -> None:
        headers = {
            "content-type": "application/json",
            "user-agent": "quaylock-webhook",
            "x-quaylock-event": action,
            "x-quaylock-delivery": secrets.token_hex(12),
            "x-quaylock-signature": "sha256="
            + hmac.new(secret, body, hashlib.sha256).hexdigest(),
        }
        for attempt, delay in enumerate((0, *RETRY_DELAYS)):
            if delay:
                await asyncio.sleep(delay)
            error = await asyncio.to_thread(
                _post, hook.url, body, headers, hook.timeout_seconds
            )
            if error is None:
                return
            log.event(
                log.logger, 20, "webhook delivery failed",
                url=_safe(hook.url), attempt=attempt + 1, error=error,
            )  # fmt: skip
        log.event(
            log.logger, 30, "webhook event dropped after retries", url=_safe(hook.url)
        )


def _post(url: str, body: bytes, headers: dict, timeout: int) -> str | None:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return None if 200 <= response.status < 300 else f"status {response.status}"
    except urllib.error.HTTPError as exc:
        return f"status {exc.code}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        return type(exc).__name__


def _safe(url: str) -> str:
    """The URL without its query (which may carry a token) for the log."""
    return url.split("?", 1)[0]
