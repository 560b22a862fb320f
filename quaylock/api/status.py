"""Routes for operators rather than registry clients: ``GET /metrics``.

Metrics carry counts by action, mode and result, never repository names,
tags or subjects, so they are served without authentication, as scrapers
expect; keep the port off the public internet all the same.
"""

from __future__ import annotations

from quaylock.api.http import Request, Response, header
from quaylock.services.registry import Registry

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


async def metrics(registry: Registry, request: Request) -> Response:
    (pending,) = registry.store.read_one(
        "SELECT count(*) FROM holds WHERE state = 'pending'"
    )
    free, headroom = registry.uploads.disk_headroom()
    body = registry.metrics.render(
        {
            "quaylock_holds_pending": (
                "Look-alike names held for an admin's decision.",
                pending,
            ),
            "quaylock_disk_free_bytes": (
                "Free bytes on the blob store's disk.",
                free,
            ),
            "quaylock_disk_floor_reached": (
                "1 while free space is at the floor and uploads are refused.",
                int(headroom <= 0),
            ),
            "quaylock_uploads_staged_bytes": (
                "Bytes staged by open upload sessions.",
                registry.store.staged_bytes(),
            ),
        }
    )
    return Response(200, [header("content-type", PROMETHEUS_TEXT)], body=body)
