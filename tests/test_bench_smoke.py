"""The side-by-side benchmark (bench/run.py) runs end to end on tiny sizes.

The full run takes many minutes and stays out of CI (`make bench`); this
quick run keeps the harness from rotting: every workload must still run
against both registries and produce a number for each, plain and with
`--defences` (quaylock with token authentication, every client sending a
bearer token).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Every workload the report must cover, and which of them report latency.
PHASES = [
    "push_small_1",
    "push_small_8",
    "push_large",
    "push_huge",
    "push_manifests",
    "pull_large_1",
    "pull_large_4",
    "head_blobs",
    "get_manifest_c1",
    "get_manifest_c16",
    "get_manifest_c64",
    "tags_list",
    "catalog",
]
LATENCY_PHASES = {
    "get_manifest_c1",
    "get_manifest_c16",
    "get_manifest_c64",
    "tags_list",
    "catalog",
}
INSTALL = {
    "docker-registry": "install the Debian package docker-registry "
    "(apt-get install docker-registry)",
    "wrk": "install the Debian package wrk (apt-get install wrk)",
}


def expected_rows() -> set[str]:
    rows = set()
    for phase in PHASES:
        rows |= {phase, f"{phase}.peak_rss", f"{phase}.cpu"}
        if phase in LATENCY_PHASES:
            rows |= {f"{phase}.p50", f"{phase}.p99"}
    return rows


def is_number(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


@pytest.mark.slow
@pytest.mark.parametrize("defences", [False, True], ids=["plain", "defences"])
def test_bench_quick_run_reports_every_row_for_both_servers(tmp_path, defences):
    for tool, hint in INSTALL.items():
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: {hint}")

    done = subprocess.run(
        [
            sys.executable, str(REPO / "bench" / "run.py"), "--quick",
            *(["--defences"] if defences else []),
            "--output", str(tmp_path / "results"),
            "--workdir", str(tmp_path / "work"),
        ],
        capture_output=True, text=True, timeout=170, cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    [path] = (tmp_path / "results").glob("*.json")
    report = json.loads(path.read_text())
    assert report["settings"]["defences"] is defences
    # With --defences every request carried a token: without one quaylock
    # would have answered 401 and the run failed above.
    assert report["settings"]["quaylock_auth"] == ("token" if defences else "none")

    rows = {row["id"]: row for row in report["rows"]}
    assert set(rows) == expected_rows()
    for row_id, row in rows.items():
        for server in ("quaylock", "distribution"):
            figures = row[server]
            assert all(is_number(figures[k]) for k in ("median", "min", "max")), (
                row_id,
                server,
                figures,
            )
        if "." not in row_id:
            # A throughput row: work was done on both sides.
            assert row["quaylock"]["median"] > 0 and row["distribution"]["median"] > 0
    assert all(v > 0 for v in report["machine"]["limits"].values())
    assert len(report["targets"]) == 6
    # The table is printed too, with the path of the JSON.
    assert str(path) in done.stdout
    assert "Targets" in done.stdout
