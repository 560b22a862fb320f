"""`quaylock serve`: run the registry under Granian.

The parent process checks the configuration and migrates the metadata store
once, then Granian starts the workers, each of which builds the application
from the same configuration (`quaylock.api.app.create_app`).
"""

from __future__ import annotations

import os
from pathlib import Path

from quaylock import config as config_mod
from quaylock import log
from quaylock.cli.main import apply_flags
from quaylock.metadata.store import open_store


def serve(args) -> int:
    apply_flags(args)
    config = config_mod.load(os.environ.get("QUAYLOCK_CONFIG_FILE") or None)
    log.configure(config.log.level, config.log.format)
    if bool(config.tls.cert) != bool(config.tls.key):
        raise config_mod.ConfigError("tls: set both cert and key, or neither")

    # Everything the registry writes (database, blobs, keys later) is for
    # its own eyes only.
    os.umask(0o077)
    os.makedirs(config.data, mode=0o700, exist_ok=True)
    open_store(config.metadata_url).close()

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
        workers_kill_timeout=config.server.shutdown_grace_seconds,
        **options,
    )
    server.serve()
    return 0
