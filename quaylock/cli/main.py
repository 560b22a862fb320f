"""The `quaylock` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from quaylock import __version__
from quaylock import config as config_mod
from quaylock.cli import add_store_options, data_lock, missing_data
from quaylock.metadata.schema import StoreError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="quaylock", description="An OCI container registry that defends itself."
    )
    parser.add_argument(
        "--version", action="version", version=f"quaylock {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the registry")
    add_store_options(serve)
    serve.add_argument(
        "--listen", help="HOST:PORT to listen on (default 127.0.0.1:5000)"
    )
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")

    from quaylock.cli import accounts, audit, doctor

    accounts.add_parsers(commands)
    audit.add_parsers(commands)
    doctor.add_parsers(commands)
    quota = commands.add_parser(
        "quota", help="stored bytes against quota, per repository, namespace and user"
    )
    add_store_options(quota)
    gc = commands.add_parser(
        "gc", help="delete unreferenced manifests and blobs, safely while serving"
    )
    add_store_options(gc)
    gc.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    gc.add_argument(
        "--grace-seconds", type=int,
        help="keep what is younger (default gc.grace_seconds)",
    )  # fmt: skip
    gc.add_argument(
        "--interval", type=int, default=0,
        help="skip if a collection ended less than this many seconds ago",
    )  # fmt: skip

    migrate = commands.add_parser(
        "migrate",
        help="bring the metadata store's schema up to this quaylock's "
        "(serve also does it when it starts)",
    )
    add_store_options(migrate)
    migrate.add_argument(
        "--check", action="store_true",
        help="change nothing; exit 1 when the store needs migrating",
    )  # fmt: skip

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            from quaylock.cli.serve import serve as run_serve

            return run_serve(args)
        if args.command in ("audit", "tag"):
            return audit.run(args)
        if args.command == "quota":
            return _quota(args)
        if args.command == "gc":
            return _gc(args)
        if args.command == "migrate":
            return _migrate(args)
        if args.command == "doctor":
            return doctor.run(args)
        return accounts.run(args)
    except config_mod.ConfigError as exc:
        print(f"quaylock: configuration error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"quaylock: {exc}", file=sys.stderr)
        return 2
    return 0


def _quota(args) -> int:
    """One JSON line per repository, namespace and user that stores, or has
    stored, bytes."""
    from quaylock.metadata.store import open_store
    from quaylock.services.quotas import QuotaGuard

    apply_flags(args)
    config = config_mod.load(os.environ.get("QUAYLOCK_CONFIG_FILE") or None)
    if missing_data(config.data):
        return 2
    store = open_store(config.metadata_url)
    try:
        for row in QuotaGuard(config.quotas).usage_report(store):
            print(json.dumps(row))
    finally:
        store.close()
    return 0


def _migrate(args) -> int:
    """Say where the store's schema stands against this quaylock's, and
    (without --check) migrate it. A store newer than this quaylock is
    refused: an older binary must not write a newer schema."""
    from quaylock.metadata import schema
    from quaylock.metadata.store import open_store, stored_schema_version

    apply_flags(args)
    config = config_mod.load(os.environ.get("QUAYLOCK_CONFIG_FILE") or None)
    if missing_data(config.data):
        return 2
    found = stored_schema_version(config.metadata_url)
    target = schema.SCHEMA_VERSION
    lock = None if args.check else data_lock(config.data, exclusive=True)
    if not args.check and lock is None:
        print(
            f"quaylock: a quaylock server is running on {config.data}: stop it "
            "(all its workers) before migrating",
            file=sys.stderr,
        )
        return 2
    if found is not None and found > target:
        print(
            f"quaylock: metadata schema is version {found}, but this quaylock "
            f"({__version__}) knows only up to {target}: upgrade quaylock",
            file=sys.stderr,
        )
        return 2
    if found == target:
        print(json.dumps({"schema": found, "target": target, "migrated": False}))
        return 0
    if args.check:
        print(json.dumps({"schema": found, "target": target, "migrated": False}))
        return 1
    open_store(config.metadata_url).close()
    print(json.dumps({"schema": found, "target": target, "migrated": True}))
    return 0


def _gc(args) -> int:
    """Collect garbage with a progress bar on stderr; the summary is one
    JSON line on stdout."""
    import asyncio
    import fcntl

    from quaylock.metadata.store import open_store
    from quaylock.services.gc import Collector
    from quaylock.services.tags import TagGuard
    from quaylock.storage.drivers.filesystem import FilesystemDriver

    apply_flags(args)
    config = config_mod.load(os.environ.get("QUAYLOCK_CONFIG_FILE") or None)
    grace = (
        config.gc.grace_seconds if args.grace_seconds is None else args.grace_seconds
    )
    if grace < config.uploads.idle_seconds:
        print(
            f"quaylock: --grace-seconds {grace} is below uploads.idle_seconds "
            f"({config.uploads.idle_seconds}); collection could take a blob an "
            "open upload is about to use",
            file=sys.stderr,
        )
        return 2
    if missing_data(config.data):
        return 2
    # One collection at a time, whether from cron, a person or the server.
    lock = open(os.path.join(config.data, "gc.lock"), "a")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(json.dumps({"skipped": "another collection is running"}))
        lock.close()
        return 0
    stamp = os.path.join(config.data, "gc.last")
    if args.interval and os.path.exists(stamp):
        if time.time() - os.path.getmtime(stamp) < args.interval * 0.9:
            print(json.dumps({"skipped": "collected less than an interval ago"}))
            lock.close()
            return 0
    store = open_store(config.metadata_url)
    try:
        collector = Collector(
            store, FilesystemDriver(str(config.storage_root)), grace, _progress_bar(),
            config.gc.retention, TagGuard(config.tags, store),
        )  # fmt: skip
        report = asyncio.run(collector.run(dry_run=args.dry_run))
        if not args.dry_run:  # a look collects nothing: the next run must not skip
            with open(stamp, "w"):
                pass  # when the last collection ended, for --interval
    finally:
        store.close()
        lock.close()
    print(file=sys.stderr)
    print(json.dumps(report.as_json()))
    return 0


def _progress_bar():
    def show(sweep: str, done: int, total: int) -> None:
        width = 30
        filled = width * done // total if total else width
        end = "\n" if done == total and not sys.stderr.isatty() else ""
        if sys.stderr.isatty() or done == total:
            print(
                f"\r{sweep:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
                end=end, file=sys.stderr, flush=True,
            )  # fmt: skip

    return show


def apply_flags(args) -> None:
    """Pass command-line settings down as environment overrides, so that the
    worker processes, which load the configuration themselves, see them."""
    if args.config:
        os.environ["QUAYLOCK_CONFIG_FILE"] = os.path.abspath(args.config)
    # Overrides are read as YAML; a JSON string is YAML, so values such as
    # "[::1]:5000" stay text.
    if getattr(args, "listen", None):
        os.environ["QUAYLOCK_LISTEN"] = json.dumps(args.listen)
    if args.data:
        os.environ["QUAYLOCK_DATA"] = json.dumps(os.path.abspath(args.data))
    if getattr(args, "workers", None) is not None:
        os.environ["QUAYLOCK_SERVER__WORKERS"] = str(args.workers)


if __name__ == "__main__":
    sys.exit(main())
