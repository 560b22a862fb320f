"""The dependency files agree with each other and with the docs: every
pin has hashes, every runtime dependency is explained, and Renovate finds
every lock it is meant to keep moving."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ("requirements.lock", "requirements-test.lock", "requirements-tools.lock")
# The pip-compile options Renovate's pip-compile manager accepts in a
# lock's header (its manager's list, read in its source, 2026-08).
RENOVATE_KNOWS = {
    "--allow-unsafe", "--generate-hashes", "--no-emit-index-url", "--strip-extras",
    "-v", "--emit-index-url", "--index-url", "--all-extras", "--resolver",
    "--constraint", "--output-file", "--extra", "--extra-index-url",
}  # fmt: skip


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _named_in(path: Path) -> set[str]:
    """The packages a .in file asks for."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(_normalised(re.split(r"[\[<>=~! ]", line)[0]))
    return names


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_is_exact_and_hashed(lock):
    text = (ROOT / lock).read_text()
    header = text.split("\n\n")[0]
    source = lock.replace(".lock", ".in")
    (command,) = [line for line in header.splitlines() if "pip-compile --" in line]
    assert "--generate-hashes" in command and command.endswith(f" {source}")
    # Nothing of the machine that locked it: no index or wheel folders.
    assert "--no-emit-index-url" in command
    # Renovate runs that command again, and skips a lock whose command has
    # an option its pip-compile manager does not know.
    options = {o.split("=")[0] for o in command.split() if o.startswith("-")}
    assert options <= RENOVATE_KNOWS, options - RENOVATE_KNOWS
    assert not re.search(r"^--(extra-)?(index-url|find-links)", text, re.M)
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n\n", 1)[1])
    pins = [e for e in entries if not e.startswith("#")]
    assert pins
    for entry in pins:
        first = entry.splitlines()[0]
        assert re.fullmatch(r"[A-Za-z0-9._-]+==[^ ]+ \\", first), first
        assert "--hash=sha256:" in entry, first


def test_each_runtime_dependency_is_explained_and_declared():
    wanted = _named_in(ROOT / "requirements.in")
    explained = {
        _normalised(m)
        for m in re.findall(
            r"^\| ([A-Za-z0-9._-]+)",
            (ROOT / "docs" / "dependencies.md").read_text(),
            re.M,
        )
    }
    assert wanted - {"package"} <= explained, wanted - explained
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        _normalised(re.split(r"[\[<>=~! ]", d)[0]) for d in project["dependencies"]
    }
    # setuptools builds the package and pip installs it: neither is a
    # dependency of the package, both are pinned in its environment.
    assert declared == wanted - {"setuptools", "pip"}


def test_renovate_keeps_every_lock_moving():
    config = json.loads((ROOT / "renovate.json").read_text())
    patterns = [p.strip("/") for p in config["pip-compile"]["managerFilePatterns"]]
    for lock in LOCKS:
        assert any(re.search(p, lock) for p in patterns), lock
    assert not any(re.search(p, "requirements.in") for p in patterns)
    assert config["lockFileMaintenance"]["enabled"] is True
    assert config["vulnerabilityAlerts"]["enabled"] is True
