"""The `quaylock` command line (`cli.main`)."""

import argparse
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
            "--data", default=argparse.SUPPRESS, help="YAML configuration file"
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
