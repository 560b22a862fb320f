"""The command line's own conventions: where --data and --config may go,
and what a command on a missing data folder says."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUAYLOCK_")}
    return subprocess.run(
        [sys.executable, "-m", "quaylock.cli.main", *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_data_and_config_go_before_or_after_the_action(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    config = tmp_path / "config.yaml"
    config.write_text(f"data: {data}\n")
    added = run("user", "add", "alice", "--password-stdin", "--config", str(config),
                stdin="a-long-password-1\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    for argv in (
        ("user", "--config", str(config), "list"),
        ("user", "list", "--config", str(config)),
        ("robot", "list", "--data", str(data)),
        ("audit", "verify", "--data", str(data)),
    ):
        result = run(*argv)
        assert result.returncode == 0, (argv, result.stderr)
    users = json.loads(run("user", "list", "--data", str(data)).stdout)
    assert [u["name"] for u in users] == ["alice"]


@pytest.mark.parametrize(
    "command",
    [("gc",), ("quota",), ("user", "list"), ("robot", "list"), ("token", "rotate-key"),
     ("audit", "verify"), ("tag", "holds"), ("migrate",)],
)  # fmt: skip
def test_a_missing_data_folder_is_named_not_a_traceback(tmp_path, command):
    # Not a new, empty store in the wrong folder either.
    result = run(*command, "--data", str(tmp_path / "nowhere"))
    assert not (tmp_path / "nowhere").exists()
    assert result.returncode == 2
    assert f"no data folder at {tmp_path / 'nowhere'}" in result.stderr
    assert "Traceback" not in result.stderr
