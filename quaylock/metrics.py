"""Counters in the Prometheus text format, summed over worker processes.

Every series (a counter with one set of label values) is declared here and
has a fixed slot. Each worker keeps its counts in a memory-mapped file,
``<data>/metrics/<pid>.bin``, one 8-byte float per slot: an increment is one
store into shared memory, with no system call. ``GET /metrics`` answers
from whichever worker takes the request by reading every worker's file, so
all workers give the same, current totals, and they never go backwards
while the server runs.

Measured on the way here: writing a JSON file per worker once a second made
scrapes on different workers disagree by up to a second of counts (which
Prometheus reads as resets), and writing it on every increment (temporary
file, rename) took more of a manifest push's event-loop time than the push.

Files of workers that exited stay, so totals include their counts;
`quaylock serve` clears the folder when it starts, which a scraper sees as
a counter reset. Gauges that describe shared state (held names waiting for
an admin) are read from the metadata store at scrape time.
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import threading
from pathlib import Path

# The actions of audit records (metadata.audit); anything else counts as
# "other", so a new action never breaks counting.
AUDIT_ACTIONS = (
    "push", "tag.create", "tag.move", "tag.delete", "manifest.delete",
    "refused", "alert", "held", "hold.approve", "hold.reject",
    "rule.add", "rule.delete", "allow.add", "allow.delete",
    "user.add", "user.update", "user.delete", "robot.add", "robot.revoke",
    "other",
)  # fmt: skip
SIGNATURE_MODES = ("tag", "pull", "audit")
SIGNATURE_RESULTS = ("verified", "unsigned", "invalid")

# name -> (help text, [labels of each series]).
COUNTERS: dict[str, tuple[str, list[tuple[tuple[str, str], ...]]]] = {
    "quaylock_audit_events_total": (
        "Audit log records written, by action (push, tag.create, tag.move, "
        "tag.delete, refused, held, alert, ...).",
        [(("action", a),) for a in AUDIT_ACTIONS],
    ),
    "quaylock_signature_checks_total": (
        "Signature checks under a signature policy, by mode (tag, pull, audit) "
        "and result (verified, unsigned, invalid).",
        [
            (("mode", m), ("result", r))
            for m in SIGNATURE_MODES
            for r in SIGNATURE_RESULTS
        ],
    ),
}
_SLOTS = {
    (name, labels): i
    for i, (name, labels) in enumerate(
        (name, labels) for name, (_, series) in COUNTERS.items() for labels in series
    )
}
_SIZE = 8 * len(_SLOTS)
_VALUES = struct.Struct(f"<{len(_SLOTS)}d")

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """Args:
    directory: where workers share their counters; None keeps them in
        this process only (tests, the command line).
    """

    def __init__(self, directory: Path | None = None):
        self.directory = directory
        self._lock = threading.Lock()
        self._values = bytearray(_SIZE)  # until the shared file is open
        self._pid: int | None = None

    def _memory(self):
        """This process's slots: its shared file once it has one. Opened on
        first use, in the worker, so a forked worker gets a file of its
        own rather than its parent's."""
        if self.directory is None or self._pid == os.getpid():
            return self._values
        self._pid = os.getpid()
        try:
            fd = os.open(
                self.directory / f"{self._pid}.bin", os.O_RDWR | os.O_CREAT, 0o600
            )
            try:
                os.ftruncate(fd, _SIZE)
                shared = mmap.mmap(fd, _SIZE)
            finally:
                os.close(fd)
        except OSError:
            return self._values  # count in memory; this worker alone shows it
        shared[:] = bytes(_SIZE)
        self._values = shared
        return shared

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        slot = _SLOTS.get((name, key))
        if slot is None and name == "quaylock_audit_events_total":
            slot = _SLOTS[(name, (("action", "other"),))]
        if slot is None:
            raise KeyError(f"undeclared metric series {name}{key}")
        with self._lock:
            memory = self._memory()
            offset = 8 * slot
            (current,) = struct.unpack_from("<d", memory, offset)
            struct.pack_into("<d", memory, offset, current + value)

    def flush(self) -> None:
        """Make the shared file durable enough for a clean shutdown."""
        if isinstance(self._values, mmap.mmap):
            self._values.flush()

    def totals(self) -> list[float]:
        """Every worker's counts, summed, slot by slot."""
        with self._lock:
            own = _VALUES.unpack(bytes(self._memory()))
        totals = list(own)
        if self.directory is not None:
            for path in self.directory.glob("*.bin"):
                if path.name == f"{os.getpid()}.bin":
                    continue
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                if len(data) == _SIZE:
                    totals = [a + b for a, b in zip(totals, _VALUES.unpack(data))]
        return totals

    def value(self, name: str, **labels: str) -> float:
        return self.totals()[_SLOTS[(name, tuple(sorted(labels.items())))]]

    def render(self, gauges: dict[str, tuple[str, float]]) -> bytes:
        """The Prometheus text exposition (version 0.0.4): the counters, and
        `gauges` as name -> (help, value)."""
        totals = self.totals()
        lines = []
        for name, (help_text, series) in COUNTERS.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for labels in series:
                value = totals[_SLOTS[(name, labels)]]
                if value:
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
