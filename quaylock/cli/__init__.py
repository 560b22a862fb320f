"""The `quaylock` command line (`cli.main`)."""

import argparse
import fcntl
import os
import sys


def add_store_options(parser, actions=None) -> None:
    """--config and --data on a command and, when it has them, on each of
    its actions, so that either order works (``user --config F add`` and
    ``user add --config F``)."""
    parser.add_argument("--config", help="YAML configuration file")
    parser.add_argument("--data", help="data folder (default ./data)")
    for action in actions.choices.values() if actions is not None else ():
        # SUPPRESS: an action that is not given the flag keeps the
        # command's value instead of overwriting it with None.
        action.add_argument(
            "--config", default=argparse.SUPPRESS, help="YAML configuration file"
        )
        action.add_argument(
            "--data", default=argparse.SUPPRESS, help="data folder (default ./data)"
        )


def missing_data(data: str) -> bool:
    """Say so on stderr when the data folder `data` does not exist."""
    if os.path.isdir(data):
        return False
    print(
        f"quaylock: no data folder at {data}: give the one the server uses, "
        "with --data DIR or with data: in --config FILE",
        file=sys.stderr,
    )
    return True


def data_lock(data: str, exclusive: bool):
    """A lock on the data folder: `serve` holds it shared while it runs (its
    workers inherit it), `migrate` and a server that migrates hold it
    alone. The open file holding it, or None when it is taken the other
    way: a migration must never run under a server still using the old
    schema (its writes would fail)."""
    lock = open(os.path.join(data, "serve.lock"), "a")  # noqa: SIM115 - held
    how = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(lock, how | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock
