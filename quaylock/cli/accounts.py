"""`quaylock user ...`, `quaylock robot ...` and `quaylock token ...`.

These work on the data folder directly (the same SQLite file the server
uses, safely while it runs), so an operator can manage accounts without
any credentials when logged in on the machine that holds the data.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
from pathlib import Path

from quaylock import config as config_mod
from quaylock.cli import add_store_options, missing_data
from quaylock.errors import RegistryError
from quaylock.metadata.store import open_store
from quaylock.policy.accounts import ACTOR, Accounts
from quaylock.policy.limiter import LoginLimiter
from quaylock.policy.tokens import KeyRing


def add_parsers(commands) -> None:
    for name in ("user", "robot", "token"):
        parser = commands.add_parser(name, help=f"manage {name}s")
        actions = parser.add_subparsers(dest="verb", required=True)
        globals()[f"_add_{name}_actions"](actions)
        add_store_options(parser, actions)


def _add_user_actions(actions) -> None:
    add = actions.add_parser(
        "add", help="create a user (password from stdin or a prompt)"
    )
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may do everything")
    add.add_argument(
        "--group", action="append", default=[], help="a group (repeatable)"
    )
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    passwd = actions.add_parser("passwd", help="set a user's password")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true")
    actions.add_parser("list", help="list users")
    delete = actions.add_parser("delete", help="delete a user and revoke its robots")
    delete.add_argument("name")
    for flag in ("disable", "enable"):
        p = actions.add_parser(flag, help=f"{flag} a user's logins")
        p.add_argument("name")
    groups = actions.add_parser("groups", help="set a user's groups")
    groups.add_argument("name")
    groups.add_argument("group", nargs="*")
    imported = actions.add_parser(
        "import-htpasswd", help="create users from an htpasswd file (bcrypt)"
    )
    imported.add_argument("file")


def _add_robot_actions(actions) -> None:
    add = actions.add_parser(
        "add", help="create a robot account; prints its secret once"
    )
    add.add_argument("name", help="the robot is robot$NAME")
    add.add_argument("--owner", required=True, help="the user whose rights bound it")
    add.add_argument(
        "--repository",
        action="append",
        required=True,
        help="repository pattern (repeatable)",
    )
    add.add_argument(
        "--action",
        action="append",
        choices=["pull", "push", "delete"],
        required=True,
        help="allowed action (repeatable)",
    )
    add.add_argument("--expires-in", type=int, help="seconds until it expires")
    revoke = actions.add_parser("revoke", help="revoke a robot at once")
    revoke.add_argument("name")
    actions.add_parser("list", help="list robots")


def _add_token_actions(actions) -> None:
    actions.add_parser(
        "rotate-key", help="add a new token signing key (old ones still verify)"
    )


def run(args) -> int:
    from quaylock.cli.main import apply_flags

    apply_flags(args)
    config = config_mod.load(os.environ.get("QUAYLOCK_CONFIG_FILE") or None)
    if missing_data(config.data):
        return 2  # not a new, empty store in the wrong folder
    data = Path(config.data).resolve()
    if args.command == "token":
        kid = KeyRing(data / "keys").rotate()
        print(f"new signing key {kid}; restart the registry to sign with it")
        return 0
    os.umask(0o077)
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = open_store(config.metadata_url)
    accounts = Accounts(store, LoginLimiter(1, 1))
    from quaylock.services.tags import Actor

    ACTOR.set(Actor(cli_actor()))
    try:
        return asyncio.run(_run(args, accounts))
    except RegistryError as exc:
        print(f"quaylock: {exc.message}", file=sys.stderr)
        return 1
    finally:
        store.close()


def cli_actor() -> str:
    """Who runs the command, for the audit log: cli:<login name>."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"


def _password(args) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif not sys.stdin.isatty():
        raise SystemExit(
            "quaylock: no terminal to ask for a password; pipe it in with "
            "--password-stdin"
        )
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise SystemExit("quaylock: the passwords differ")
    if len(password) < 8:
        raise SystemExit("quaylock: a password needs at least 8 characters")
    return password


async def _run(args, accounts: Accounts) -> int:
    command, action = args.command, args.verb
    if command == "user":
        if action == "add":
            await accounts.add_user(args.name, _password(args), args.admin, args.group)
        elif action == "passwd":
            await accounts.set_password(args.name, _password(args))
        elif action == "list":
            print(json.dumps(accounts.list_users(), indent=2))
        elif action == "delete":
            await accounts.delete_user(args.name)
        elif action in ("disable", "enable"):
            await accounts.set_disabled(args.name, action == "disable")
        elif action == "groups":
            await accounts.set_groups(args.name, args.group)
        elif action == "import-htpasswd":
            names = await accounts.import_htpasswd(Path(args.file).read_text())
            print(f"imported {len(names)} user(s): {', '.join(names)}")
    elif command == "robot":
        if action == "add":
            grants = [{"repositories": args.repository, "actions": args.action}]
            secret = await accounts.add_robot(
                args.name, args.owner, grants, args.expires_in
            )
            print(json.dumps({"name": f"robot${args.name}", "secret": secret}))
        elif action == "revoke":
            await accounts.revoke_robot(args.name)
        elif action == "list":
            print(json.dumps(accounts.list_robots(), indent=2))
    return 0
