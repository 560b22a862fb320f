"""Counters in the Prometheus text format, summed over worker processes.

Each worker counts in memory and writes its counters to
``<data>/metrics/<pid>.json`` (temporary file, then rename, no fsync) as
part of each increment, before the request that counted answers. ``GET
/metrics`` answers from whichever worker takes the request: its own
counters plus every other worker's file, each as current as that worker's
last answered request, so totals seen by a scraper never go backwards.
(A file written at most once a second made scrapes on different workers
disagree by up to a second of counts, which Prometheus reads as resets.)
Counted events are manifest pushes, refusals, holds and signature checks,
not blob traffic, so a small file write each is cheap beside the database
commit most of them make anyway. Files of workers that exited stay, so
totals never go backwards while the server runs; `quaylock serve` clears
the folder when it starts, which a scraper sees as a counter reset.

Gauges that describe shared state (held names waiting for an admin) are
read from the metadata store at scrape time, so every worker gives the same
answer.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections import defaultdict
from pathlib import Path

# name -> help text; every counter is declared here, so /metrics shows it
# (at 0) before anything has happened.
COUNTERS = {
    "quaylock_audit_events_total": (
        "Audit log records written, by action (push, tag.create, tag.move, "
        "tag.delete, refused, held, alert, ...)."
    ),
    "quaylock_signature_checks_total": (
        "Signature checks under a signature policy, by mode (tag, pull, audit) "
        "and result (verified, unsigned, invalid)."
    ),
}

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """Args:
    directory: where workers share their counters; None keeps them in
        this process only (tests, the command line).
    """

    def __init__(self, directory: Path | None = None):
        self.directory = directory
        self._counts: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._lock = threading.Lock()

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counts[name]
            series[key] = series.get(key, 0) + value
            snapshot = self._snapshot() if self.directory is not None else None
        if snapshot is not None:
            self._write(snapshot)

    def flush(self) -> None:
        """Write this worker's counters for the others (at shutdown)."""
        if self.directory is not None:
            with self._lock:
                snapshot = self._snapshot()
            self._write(snapshot)

    def _write(self, snapshot: dict) -> None:
        path = self.directory / f"{os.getpid()}.json"
        temporary = path.with_suffix(f".{threading.get_ident()}.tmp")
        try:
            temporary.write_text(json.dumps(snapshot))
            os.replace(temporary, path)
        except OSError:
            pass  # the next increment writes the file again

    def _snapshot(self) -> dict:
        return {
            name: [[list(map(list, labels)), value] for labels, value in series.items()]
            for name, series in self._counts.items()
        }

    def totals(self) -> dict[str, dict[Labels, float]]:
        """Every worker's counters, summed."""
        totals: dict[str, dict[Labels, float]] = defaultdict(dict)
        with self._lock:
            snapshots = [self._snapshot()]
        if self.directory is not None:
            own = f"{os.getpid()}.json"
            for path in self.directory.glob("*.json"):
                if path.name == own:
                    continue
                try:
                    snapshots.append(json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue  # a worker mid-write; its next file counts
        for snapshot in snapshots:
            for name, series in snapshot.items():
                if name not in COUNTERS:
                    continue
                for labels, value in series:
                    key = tuple((str(k), str(v)) for k, v in labels)
                    totals[name][key] = totals[name].get(key, 0) + value
        return totals

    def render(self, gauges: dict[str, tuple[str, float]]) -> bytes:
        """The Prometheus text exposition (version 0.0.4): the counters, and
        `gauges` as name -> (help, value)."""
        lines = []
        totals = self.totals()
        for name, help_text in COUNTERS.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for labels, value in sorted(totals.get(name, {}).items()):
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
        for name, (help_text, value) in gauges.items():
            lines += [
                f"# HELP {name} {help_text}",
                f"# TYPE {name} gauge",
                f"{name} {_number(value)}",
            ]
        return ("\n".join(lines) + "\n").encode()


def reset(directory: Path) -> None:
    """Clear the shared counters (`quaylock serve`, before workers start)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
