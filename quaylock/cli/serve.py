"""`quaylock serve`: run the registry under Granian.

The parent process checks the configuration and migrates the metadata store
once, then Granian starts the workers, each of which builds the application
from the same configuration (`quaylock.api.app.create_app`).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import sys
from pathlib import Path

from quaylock import config as config_mod
from quaylock import log, metrics
from quaylock.cli import data_lock
from quaylock.cli.main import apply_flags
from quaylock.doctor import tls_problem
from quaylock.metadata.schema import SCHEMA_VERSION, StoreError
from quaylock.metadata.store import open_store, stored_schema_version
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


def _hold_data(config):
    """The data folder's lock (cli.data_lock), held for as long as this
    server runs; alone while a migration is due. None, having said why,
    when another process holds it the other way."""
    lock = data_lock(config.data, exclusive=False)
    if lock is None:
        print(f"quaylock: `quaylock migrate` is running on {config.data}; "
              "start the server when it is done", file=sys.stderr)  # fmt: skip
        return None
    found = stored_schema_version(config.metadata_url)
    if found is not None and found < SCHEMA_VERSION:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"quaylock: the store in {config.data} needs migrating from schema "
                f"{found} to {SCHEMA_VERSION}, but another quaylock server is "
                "running on it: stop that one first (it cannot use the new schema)",
                file=sys.stderr,
            )
            lock.close()
            return None
    _HELD.append(lock)
    return lock


# The data folder's lock, held until the process ends.
_HELD: list = []


def serve(args) -> int:
    apply_flags(args)
    config = config_mod.load(os.environ.get("QUAYLOCK_CONFIG_FILE") or None)
    log.configure(config.log.level, config.log.format)
    check_port_free(config.host, config.port)

    # Everything the registry writes (database, blobs, keys later) is for
    # its own eyes only.
    os.umask(0o077)
    if config.tls.cert and (problem := tls_problem(config.tls.cert, config.tls.key)):
        print(f"quaylock: tls: {problem}", file=sys.stderr)
        return 2
    os.makedirs(config.data, mode=0o700, exist_ok=True)
    try:
        lock = _hold_data(config)
        if lock is None:
            return 2
        prepare(config)
    except StoreError as exc:
        print(f"quaylock: {exc}", file=sys.stderr)
        return 2
    fcntl.flock(lock, fcntl.LOCK_SH)  # migrated, if it had to: share again

    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings, HTTP2Settings

    log.event(
        log.logger,
        20,
        "serving",
        listen=config.listen,
        data=str(config.storage_root),
        workers=config.server.workers,
        tls=bool(config.tls.cert),
    )
    server_config = config.server
    _raise_open_files_limit(server_config.max_connections)
    # Plain HTTP is HTTP/1.1 only: a plaintext HTTP/2 (h2c) connection is
    # not held to the header read timeout, so a client could keep one open
    # for nothing. With TLS, clients may negotiate HTTP/2; pings then close
    # connections whose peer is gone.
    options: dict = {"http": HTTPModes.http1}
    if config.tls.cert:
        options = {
            "ssl_cert": Path(config.tls.cert),
            "ssl_key": Path(config.tls.key),
            "http": HTTPModes.auto,
            "http2_settings": HTTP2Settings(
                keep_alive_interval=server_config.header_read_timeout_seconds * 1000,
                keep_alive_timeout=10,
            ),
        }
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
        workers=server_config.workers,
        # Connections each worker holds open; past them, new ones wait.
        backpressure=-(-server_config.max_connections // server_config.workers),
        http1_settings=HTTP1Settings(
            header_read_timeout=server_config.header_read_timeout_seconds * 1000,
            max_buffer_size=server_config.max_header_bytes,
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
        # A worker that dies (killed for memory, say) is started again
        # rather than taking the whole server down with it.
        respawn_failed_workers=True,
        **options,
    )
    server.serve()
    return 0


def _raise_open_files_limit(connections: int) -> None:
    """Each connection is a file descriptor, and so is every blob being
    read or written: a worker at its descriptor limit stops accepting
    connections at all. Raise the soft limit toward the hard one, and say
    so when even that is short."""
    import resource

    wanted = connections + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.event(
            log.logger, 30,
            "open files limit is below server.max_connections plus headroom",
            limit=target, wanted=wanted,
        )  # fmt: skip
