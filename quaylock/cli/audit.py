"""`quaylock audit verify`, and `quaylock tag` history, rollback and held
look-alike names (holds, approve, reject)."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from quaylock import config as config_mod
from quaylock.cli import add_store_options, missing_data
from quaylock.errors import RegistryError
from quaylock.metadata import audit
from quaylock.metadata.store import open_store


def add_parsers(commands) -> None:
    audit_parser = commands.add_parser("audit", help="check the audit log")
    verbs = audit_parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("verify", help="check the hash chain of the whole log")
    add_store_options(audit_parser, verbs)

    tag = commands.add_parser("tag", help="tag history and rollback")
    verbs = tag.add_subparsers(dest="verb", required=True)
    history = verbs.add_parser("history", help="where a tag pointed, and who moved it")
    history.add_argument("reference", help="REPOSITORY:TAG")
    rollback = verbs.add_parser(
        "rollback", help="point a tag back where it was, under the same tag rules"
    )
    rollback.add_argument("reference", help="REPOSITORY:TAG")
    rollback.add_argument(
        "--to", help="the digest to point at (default: the one before)"
    )
    rollback.add_argument(
        "--as",
        dest="actor",
        default=None,
        help="name for the audit log (default: your login name)",
    )
    holds = verbs.add_parser("holds", help="look-alike names held for an admin")
    holds.add_argument(
        "--state", default="pending", choices=("pending", "approved", "rejected", "all")
    )
    for verb, what in (
        ("approve", "allow a held name (and point a held tag at its digest)"),
        ("reject", "refuse a held name"),
    ):
        decide = verbs.add_parser(verb, help=what)
        decide.add_argument("hold", type=int, help="the hold's number")
        decide.add_argument(
            "--as",
            dest="actor",
            default=None,
            help="name for the audit log (default: your login name)",
        )
    add_store_options(tag, verbs)


def _split(reference: str) -> tuple[str, str]:
    repository, sep, tag = reference.rpartition(":")
    if not sep or not repository:
        raise SystemExit(f"quaylock: expected REPOSITORY:TAG, got {reference!r}")
    return repository, tag


def run(args) -> int:
    from quaylock.cli.main import apply_flags

    apply_flags(args)
    config = config_mod.load(os.environ.get("QUAYLOCK_CONFIG_FILE") or None)
    if missing_data(config.data):
        return 2
    store = open_store(config.metadata_url)
    try:
        if args.command == "audit":
            rows = store.read_all(
                f"SELECT {audit.ALL_COLUMNS} FROM audit_log ORDER BY seq"
            )
            report = audit.verify_chain(rows)
            if report.ok:
                print(
                    f"audit log intact: {report.records} records, last hash {report.last_hash}"
                )
                return 0
            print(
                f"audit log BROKEN after {report.records} good records: {report.problem}",
                file=sys.stderr,
            )
            return 1
        if args.verb in ("holds", "approve", "reject"):
            return asyncio.run(_holds(config, store, args))
        repository, tag = _split(args.reference)
        if args.verb == "history":
            for record in audit.tag_history(store, repository, tag):
                print(json.dumps(record))
            return 0
        return asyncio.run(_rollback(config, store, repository, tag, args))
    except RegistryError as exc:
        print(f"quaylock: {exc.message}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _registry(config, store):
    from quaylock.services.registry import Registry
    from quaylock.storage.drivers.filesystem import FilesystemDriver

    return Registry(config, FilesystemDriver(str(config.storage_root)), store)


async def _holds(config, store, args) -> int:

    tag_admin = _registry(config, store).tag_admin
    if args.verb == "holds":
        state = None if args.state == "all" else args.state
        before = None
        while page := tag_admin.holds(state, 1000, before):
            for hold in page:
                print(json.dumps(hold.as_json()))
            before = page[-1].id
        return 0
    actor = _actor(args)
    if args.verb == "approve":
        hold = await tag_admin.approve(args.hold, actor)
    else:
        hold = await tag_admin.reject(args.hold, actor)
    print(json.dumps(hold.as_json()))
    return 0


async def _rollback(config, store, repository: str, tag: str, args) -> int:

    target = args.to
    if target is None:
        moves = [
            r for r in audit.tag_history(store, repository, tag)
            if r["action"] in ("tag.move", "tag.delete") and r["old_digest"]
        ]  # fmt: skip
        if not moves:
            print(
                f"quaylock: {repository}:{tag} has no earlier digest", file=sys.stderr
            )
            return 1
        target = moves[-1]["old_digest"]
    registry = _registry(config, store)
    # The operator on the machine holds every right; the tag rules that bind
    # everyone (immutable tags, naming) still apply.
    old = await registry.set_tag(repository, tag, target, _actor(args))
    print(f"{repository}:{tag} moved from {old} to {target}")
    return 0


def _actor(args):
    from quaylock.cli.accounts import cli_actor
    from quaylock.services.tags import Actor

    return Actor(f"cli:{args.actor}" if args.actor else cli_actor())
