#!/usr/bin/env python3
"""Side-by-side benchmark: quaylock against CNCF Distribution on loopback.

Usage: ``.venv/bin/python bench/run.py [--quick] [--rounds N] [--defences]``
(``make bench`` runs the full set). bench/README.md says what each row
means and how to read the report.

A round starts both registries on empty storage, runs every workload
against each in turn (which server goes first alternates from round to
round), then stops and wipes them. Each timed step is watched for the
server's CPU time and peak memory, and the load generators' own CPU time.
The report is printed as tables and written as JSON to
``bench-results/<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine
import report
import workloads
from servers import (
    Distribution,
    PhaseMonitor,
    Quaylock,
    Server,
    machine_busy_seconds,
    quaylock_auth,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MIB = 1024 * 1024
# Before each timed step: wait for a window this long in which other
# programs used fewer cores than this, for at most this many seconds.
QUIET_WINDOW = 0.5
QUIET_CORES = 0.15
QUIET_TIMEOUT = 30.0

INSTALL_HINT = {
    "docker-registry": "install the Debian package docker-registry "
    "(apt-get install docker-registry)",
    "wrk": "install the Debian package wrk (apt-get install wrk)",
}


class MissingTool(Exception):
    """A program the benchmark drives is not installed."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark quaylock against CNCF Distribution on loopback."
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, one round (the smoke test)"
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument(
        "--defences",
        action="store_true",
        help="run quaylock with bench/quaylock-defences.yaml",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="quaylock worker processes (default 1)"
    )
    parser.add_argument(
        "--wrk-seconds",
        type=int,
        help="seconds per wrk run (default 5; 1 with --quick)",
    )
    parser.add_argument(
        "--output", type=Path, default=REPO / "bench-results", help="folder for JSON"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where to put data and blobs (default: $TMPDIR)"
    )
    parser.add_argument(
        "--quaylock", default=str(REPO / ".venv" / "bin" / "quaylock"),
        help="the quaylock program",
    )  # fmt: skip
    parser.add_argument(
        "--registry", default="docker-registry", help="Distribution's program"
    )
    parser.add_argument(
        "--rev",
        help="benchmark quaylock as of this git revision (exported from the "
        "repository) instead of the working tree",
    )
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        help="seconds to wait for an idle machine before each timed step "
        f"(default {QUIET_TIMEOUT:g}; 0 with --quick)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    return parser.parse_args(argv)


def find_tool(name: str, hint_key: str) -> str:
    """Return the program's path.

    Raises:
        MissingTool: it is not installed; the message says how to install it.
    """
    path = shutil.which(name)
    if path is None:
        raise MissingTool(f"{name} not found: {INSTALL_HINT[hint_key]}")
    return path


def version(command: list[str]) -> str:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        return f"unknown ({exc})"
    return (done.stdout or done.stderr).strip().splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        registry = find_tool(args.registry, "docker-registry")
        find_tool("wrk", "wrk")
    except MissingTool as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if not os.access(args.quaylock, os.X_OK):
        print(
            f"bench: {args.quaylock} is not there; run `make serve` once",
            file=sys.stderr,
        )
        return 2

    sizes = workloads.QUICK if args.quick else workloads.Sizes()
    if args.wrk_seconds:
        sizes = dataclasses.replace(sizes, wrk_seconds=args.wrk_seconds)
    rounds = args.rounds or (1 if args.quick else 3)
    if args.quiet_timeout is None:
        args.quiet_timeout = 0.0 if args.quick else QUIET_TIMEOUT
    config = BENCH / ("quaylock-defences.yaml" if args.defences else "quaylock.yaml")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="quaylock-bench-", dir=args.workdir))
    started = _now()
    try:
        result = run(args, sizes, rounds, config, registry, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result["started"] = started
    result["finished"] = _now()

    # Write the JSON first: the table is a view of it.
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"{started.replace(':', '').replace('-', '')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(report.render(result))
    print(f"\nJSON: {path}")
    return 0


def run(args, sizes, rounds, config, registry, workdir: Path) -> dict:
    # The machine's limits, on the same disk the registries write to.
    limit_bytes = 16 * MIB if args.quick else 256 * MIB
    tcp_bytes = 64 * MIB if args.quick else 2048 * MIB
    _progress("measuring the machine's limits")
    limits = machine.measure(workdir, limit_bytes, tcp_bytes)

    source, revision = None, _describe_tree()
    if args.rev:
        source, revision = export_revision(args.rev, workdir / "quaylock-src")

    # Content for every round, then the rounds: fresh servers each time.
    _progress("generating blobs")
    fixture = workloads.make_fixture(sizes, workdir / "fixture")
    phases = workloads.phases(sizes, fixture)
    results: dict[str, dict[str, list]] = {name: {} for name in report.SERVERS}
    for number in range(rounds):
        servers = [
            Quaylock(
                workdir / f"round{number}-quaylock",
                args.quaylock,
                config,
                args.workers,
                source,
            ),
            Distribution(workdir / f"round{number}-distribution", registry),
        ]
        order = servers if number % 2 == 0 else servers[::-1]
        try:
            for server in servers:
                server.start()
            for phase in phases:
                for server in order:
                    measured = measure(server, phase, args.quiet_timeout)
                    results[server.name].setdefault(phase.id, []).append(measured)
                    where = f"round {number + 1}/{rounds} {phase.id} {server.name}"
                    _progress(f"{where}: {_summary(phase, measured)}")
        finally:
            for server in servers:
                server.stop()
                server.wipe()

    rows = report.build_rows(phases, results)
    cpus = os.cpu_count() or 1
    return {
        "settings": {
            "rounds": rounds,
            "quick": args.quick,
            "defences": args.defences,
            "quaylock_config": str(config.relative_to(REPO)),
            "quaylock_auth": quaylock_auth(config)[0],
            "quaylock_workers": args.workers,
            "quiet_timeout_s": args.quiet_timeout,
            "sizes": dataclasses.asdict(sizes),
        },
        "machine": {**machine.describe(), "limits": limits},
        "servers": {
            "quaylock": {
                "version": version([args.quaylock, "--version"]),
                "revision": revision,
            },
            "distribution": {"version": version([registry, "--version"])},
        },
        "rows": rows,
        "client_overhead": report.client_overhead(phases, results, cpus),
        "targets": report.evaluate_targets(rows),
        "phases": [{"id": p.id, "label": p.label, "unit": p.unit} for p in phases],
        "measurements": results,
    }


def export_revision(rev: str, folder: Path) -> tuple[Path, str]:
    """Export the `quaylock` package as of `rev` into `folder`; return the
    folder and the commit it came from.

    Raises:
        subprocess.CalledProcessError: `rev` is not a commit here.
    """
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    folder.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "quaylock"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder, commit


def _describe_tree() -> str:
    """The working tree's commit, marked when it has uncommitted changes."""
    try:
        commit = _git("rev-parse", "HEAD").strip()
        dirty = _git("status", "--porcelain", "--", "quaylock").strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+uncommitted" if dirty else commit


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def measure(server: Server, phase: workloads.Phase, quiet_timeout: float) -> dict:
    """Run one phase against one server and return its figures."""
    if phase.prepare is not None:
        phase.prepare(server)
    # Flush what earlier phases left dirty (Distribution does not fsync), so
    # that its write-back does not land in this phase's time.
    os.sync()
    waited = wait_for_quiet(timeout=quiet_timeout)

    monitors: list[PhaseMonitor] = []

    @contextlib.contextmanager
    def watch():
        monitor = PhaseMonitor(server.pid)
        monitors.append(monitor)
        with monitor:
            yield

    # Load generators are children (client processes, wrk); this process
    # only samples /proc. Whatever else the machine did is someone else's.
    children, own = _rusage(resource.RUSAGE_CHILDREN), _rusage(resource.RUSAGE_SELF)
    busy = machine_busy_seconds()
    outcome = phase.run(server, watch)
    busy = machine_busy_seconds() - busy
    children = _rusage(resource.RUSAGE_CHILDREN) - children
    own = _rusage(resource.RUSAGE_SELF) - own
    monitor = monitors[0]
    hwm = None if monitor.hwm is None else monitor.hwm / MIB
    return {
        "units": outcome.units,
        "wall_s": outcome.wall_s,
        **outcome.extra,
        "server_cpu_s": monitor.cpu,
        "client_cpu_s": children,
        "harness_cpu_s": own,
        "other_cpu_s": max(busy - monitor.cpu - children - own, 0.0),
        # The sampled peak can miss a spike between samples, and the sum of
        # per-process peaks can overstate a tree whose peaks did not meet:
        # report the larger, so the figure is never flattering.
        "peak_rss_mib": max(monitor.peak_rss / MIB, hwm or 0.0),
        "sampled_peak_rss_mib": monitor.peak_rss / MIB,
        "hwm_sum_mib": hwm,
        "rss_samples": monitor.samples,
        "quiet_wait_s": waited,
    }


def wait_for_quiet(
    limit_cores: float = QUIET_CORES, timeout: float = QUIET_TIMEOUT
) -> float:
    """Wait until the machine is idle (other programs use less than
    `limit_cores` over a short window), at most `timeout` seconds; return
    the seconds waited. On a shared machine this keeps a phase from
    starting in the middle of someone else's burst."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        busy = machine_busy_seconds()
        time.sleep(QUIET_WINDOW)
        if (machine_busy_seconds() - busy) / QUIET_WINDOW < limit_cores:
            break
    return time.monotonic() - started


def _rusage(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _summary(phase: workloads.Phase, measured: dict) -> str:
    unit, scale = report.RATE_UNITS[phase.unit]
    rate = measured["units"] / scale / measured["wall_s"]
    text = f"{report.fmt(rate)} {unit}"
    if phase.latency:
        text += f", p99 {measured['p99_ms']:.2f} ms"
    return (
        f"{text} (server CPU {measured['server_cpu_s']:.2f} s, client CPU "
        f"{measured['client_cpu_s']:.2f} s, peak {measured['peak_rss_mib']:.0f} MiB)"
    )


def _progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    sys.exit(main())
