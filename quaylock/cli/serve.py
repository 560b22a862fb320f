"""`quaylock serve`: run the registry under Granian.

The parent process checks the configuration and migrates the metadata store
once, then Granian starts the workers, each of which builds the application
from the same configuration (`quaylock.api.app.create_app`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

from quaylock import config as config_mod
from quaylock import log, metrics
from quaylock.cli.main import apply_flags
from quaylock.metadata.store import open_store
from quaylock.policy.accounts import Accounts
from quaylock.policy.limiter import LoginLimiter
from quaylock.policy.tokens import KeyRing


def check_port_free(host: str, port: int) -> None:
    """Refuse to start on an address something already listens on.

    Granian binds with SO_REUSEPORT, so a second registry on the same port
    would otherwise share it silently and split the traffic between two
    stores. A plain bind, without that option, fails whenever anyone listens.

    Raises:
        ConfigError: the address is taken or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR lets the probe past connections of a stopped server
        # still in TIME_WAIT; on Linux it never lets it past a listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise config_mod.ConfigError(
                f"listen: cannot use {host}:{port} ({exc.strerror}); "
                "choose another address with --listen"
            ) from None


def prepare(config: config_mod.Config) -> None:
    """What must exist once before the workers start: the schema, an empty
    metrics folder, the token signing key and, on first start, the admin
    account."""
    store = open_store(config.metadata_url)
    metrics.reset(Path(config.data).resolve() / "metrics")
    try:
        if config.auth.mode == "none":
            log.event(
                log.logger,
                logging.WARNING,
                "authentication is off: anyone who reaches this address may "
                "push, overwrite and delete; use auth.mode none on a closed "
                "test network only",
                listen=config.listen,
            )
            return
        data = Path(config.data).resolve()
        KeyRing(data / "keys").ensure()
        accounts = Accounts(store, LoginLimiter(1, 1))
        password = os.environ.get("QUAYLOCK_ADMIN_PASSWORD") or None
        written = asyncio.run(_ensure_admin(accounts, data, password))
        if written is not None:
            log.event(
                log.logger,
                logging.WARNING,
                "created user admin; its password is in a file only this user "
                "can read: log in, change it, then delete the file",
                file=str(written),
            )
    finally:
        store.close()


async def _ensure_admin(accounts, data: Path, password: str | None):
    return await accounts.ensure_admin(data, password)


def serve(args) -> int:
    apply_flags(args)
    config = config_mod.load(os.environ.get("QUAYLOCK_CONFIG_FILE") or None)
    log.configure(config.log.level, config.log.format)
    check_port_free(config.host, config.port)

    # Everything the registry writes (database, blobs, keys later) is for
    # its own eyes only.
    os.umask(0o077)
    os.makedirs(config.data, mode=0o700, exist_ok=True)
    prepare(config)

    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    log.event(
        log.logger,
        20,
        "serving",
        listen=config.listen,
        data=str(config.storage_root),
        workers=config.server.workers,
        tls=bool(config.tls.cert),
    )
    options = {}
    if config.tls.cert:
        options = {"ssl_cert": Path(config.tls.cert), "ssl_key": Path(config.tls.key)}
    formatter = (
        "quaylock.log.JSONFormatter"
        if config.log.format == "json"
        else ("quaylock.log.TextFormatter")
    )
    server = Granian(
        "quaylock.api.app:create_app",
        factory=True,
        address=config.host,
        port=config.port,
        interface=Interfaces.ASGI,
        workers=config.server.workers,
        http1_settings=HTTP1Settings(
            header_read_timeout=config.server.header_read_timeout_seconds * 1000
        ),
        log_access=False,
        log_level=config.log.level,
        # Granian's own lines (start, workers, stop) in our format, on stderr.
        log_dictconfig={
            "formatters": {"generic": {"()": formatter}, "access": {"()": formatter}},
            "handlers": {
                "console": {
                    "formatter": "generic",
                    "class": "logging.StreamHandler",
                    "stream": "ext://sys.stderr",
                },
                "access": {
                    "formatter": "access",
                    "class": "logging.StreamHandler",
                    "stream": "ext://sys.stderr",
                },
            },
        },
        workers_kill_timeout=config.server.shutdown_grace_seconds,
        **options,
    )
    server.serve()
    return 0
