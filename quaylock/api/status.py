"""Routes for operators rather than registry clients: ``GET /metrics``,
``GET /healthz`` (the process answers) and ``GET /readyz`` (the stores
answer; whether uploads are taken or wait for disk space).

Metrics carry counts by action, mode and result, never repository names,
tags or subjects, so they are served without authentication, as scrapers
expect; keep the port off the public internet all the same.
"""

from __future__ import annotations

import json

from quaylock.api.http import JSON, Request, Response, header
from quaylock.services.registry import Registry

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


async def metrics(registry: Registry, request: Request) -> Response:
    (pending,) = registry.store.read_one(
        "SELECT count(*) FROM holds WHERE state = 'pending'"
    )
    (open_uploads,) = registry.store.read_one("SELECT count(*) FROM uploads")
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
            "quaylock_uploads_open": (
                "Upload sessions open (expired ones until the purge takes them).",
                open_uploads,
            ),
            "quaylock_uploads_staged_bytes": (
                "Bytes staged or reserved by open upload sessions.",
                registry.store.staged_bytes(),
            ),
        }
    )
    return Response(200, [header("content-type", PROMETHEUS_TEXT)], body=body)


async def healthz(registry: Registry, request: Request) -> Response:
    return Response(200, [JSON], body=b'{"status":"ok"}')


async def readyz(registry: Registry, request: Request) -> Response:
    """200 while the metadata database and the blob store answer, with the
    free-disk floor's state; 503 naming what does not answer. A registry at
    its disk floor stays ready: pulls go on, uploads wait."""
    checks: dict = {}
    try:
        registry.store.read_one("SELECT 1")
        checks["metadata"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks["metadata"] = f"error: {type(exc).__name__}"
    try:
        free, headroom = registry.uploads.disk_headroom()
        checks["blob_store"] = "ok"
        checks["disk_free_bytes"] = free
        checks["uploads"] = "accepted" if headroom > 0 else "refused: disk floor"
    except OSError as exc:
        checks["blob_store"] = f"error: {exc.strerror}"
    ready = checks["metadata"] == "ok" and checks["blob_store"] == "ok"
    body = json.dumps({"status": "ready" if ready else "not ready", **checks})
    return Response(200 if ready else 503, [JSON], body=body.encode())
