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

import bisect
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
# Why a request was refused (`quaylock_refusals_total`).
REFUSAL_REASONS = (
    "rate_limit", "in_flight", "sessions", "quota", "size", "policy", "auth",
    "disk", "staging", "timeout",
)  # fmt: skip

# Request series: every route template, by method and status.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "other")
CODES = (
    "200", "201", "202", "204", "206", "307", "400", "401", "403", "404",
    "405", "408", "409", "413", "415", "416", "429", "431", "499", "500",
    "503", "507", "other",
)  # fmt: skip
# Upper bounds of the latency histogram's buckets, in seconds (+Inf last).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
)  # fmt: skip
_METHOD_INDEX = {m: i for i, m in enumerate(METHODS)}
_CODE_INDEX = {int(c): i for i, c in enumerate(CODES) if c != "other"}

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
    "quaylock_refusals_total": (
        "Requests refused by a defence, by reason (rate_limit, in_flight, "
        "sessions, quota, size, policy, auth, disk, staging, timeout).",
        [(("reason", r),) for r in REFUSAL_REASONS],
    ),
}
_SLOTS = {
    (name, labels): i
    for i, (name, labels) in enumerate(
        (name, labels) for name, (_, series) in COUNTERS.items() for labels in series
    )
}
_STATIC = len(_SLOTS)

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """Args:
    directory: where workers share their counters; None keeps them in
        this process only (tests, the command line).
    routes: the route templates to count requests by (`observe`); the
        last stands for requests that matched no route.
    """

    def __init__(self, directory: Path | None = None, routes: tuple[str, ...] = ()):
        self.directory = directory
        self.routes = routes
        per_route = len(METHODS) * len(CODES)
        self._requests = _STATIC
        self._latency = self._requests + len(routes) * per_route
        self._bytes = self._latency + len(routes) * (len(LATENCY_BUCKETS) + 2)
        self._in_flight = self._bytes + 2 * len(routes)
        count = self._in_flight + 1
        self._size = 8 * count
        self._layout = struct.Struct(f"<{count}d")
        self._lock = threading.Lock()
        self._values = bytearray(self._size)  # until the shared file is open
        self._doubles = memoryview(self._values).cast("d")
        self._pid: int | None = None

    def _memory(self) -> memoryview:
        """This process's slots, as doubles: its shared file once it has
        one. Opened on first use, in the worker, so a forked worker gets a
        file of its own rather than its parent's."""
        if self.directory is None or self._pid == os.getpid():
            return self._doubles
        self._pid = os.getpid()
        try:
            fd = os.open(
                self.directory / f"{self._pid}.bin", os.O_RDWR | os.O_CREAT, 0o600
            )
            try:
                os.ftruncate(fd, self._size)
                shared = mmap.mmap(fd, self._size)
            finally:
                os.close(fd)
        except OSError:
            return self._doubles  # count in memory; this worker alone shows it
        shared[:] = bytes(self._size)
        self._values = shared
        self._doubles = memoryview(shared).cast("d")
        return self._doubles

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        slot = _SLOTS.get((name, key))
        if slot is None and name == "quaylock_audit_events_total":
            slot = _SLOTS[(name, (("action", "other"),))]
        if slot is None:
            raise KeyError(f"undeclared metric series {name}{key}")
        with self._lock:
            self._memory()[slot] += value

    def observe(
        self,
        route: int,
        method: str,
        status: int,
        seconds: float,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        """Count one request of route `route` (an index into `routes`).
        Runs on the event loop for every request: a few stores into shared
        memory, no system call."""
        if route >= len(self.routes):
            return
        memory = self._memory()
        method_at = _METHOD_INDEX.get(method, len(METHODS) - 1)
        code_at = _CODE_INDEX.get(status, len(CODES) - 1)
        memory[
            self._requests + (route * len(METHODS) + method_at) * len(CODES) + code_at
        ] += 1
        histogram = self._latency + route * (len(LATENCY_BUCKETS) + 2)
        memory[histogram + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        memory[histogram + len(LATENCY_BUCKETS) + 1] += seconds
        memory[self._bytes + 2 * route] += bytes_in
        memory[self._bytes + 2 * route + 1] += bytes_out

    def in_flight(self, delta: int) -> None:
        """Move this worker's count of requests in flight."""
        self._memory()[self._in_flight] += delta

    def flush(self) -> None:
        """Make the shared file durable enough for a clean shutdown."""
        if isinstance(self._values, mmap.mmap):
            self._values.flush()

    def totals(self) -> list[float]:
        """Every worker's counts, summed, slot by slot."""
        with self._lock:
            own = self._layout.unpack(self._memory().cast("B"))
        totals = list(own)
        if self.directory is not None:
            for path in self.directory.glob("*.bin"):
                if path.name == f"{os.getpid()}.bin":
                    continue
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                if len(data) != self._size:
                    continue
                values = list(self._layout.unpack(data))
                if not _alive(path.stem):
                    # A worker that died mid-request keeps its counts, but
                    # its requests are no longer in flight.
                    values[self._in_flight] = 0.0
                totals = [a + b for a, b in zip(totals, values)]
        return totals

    def value(self, name: str, **labels: str) -> float:
        return self.totals()[_SLOTS[(name, tuple(sorted(labels.items())))]]

    def render(self, gauges: dict[str, tuple[str, float]]) -> bytes:
        """The Prometheus text exposition (version 0.0.4): the counters, the
        request series, and `gauges` as name -> (help, value)."""
        totals = self.totals()
        lines = []
        for name, (help_text, series) in COUNTERS.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            # Every series, zeros too: a series that first appears at 356
            # has no increase to show for its first 356.
            for labels in series:
                value = totals[_SLOTS[(name, labels)]]
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
        if self.routes:
            lines += self._render_requests(totals)
        for name, (help_text, value) in gauges.items():
            lines += [
                f"# HELP {name} {help_text}",
                f"# TYPE {name} gauge",
                f"{name} {_number(value)}",
            ]
        return ("\n".join(lines) + "\n").encode()

    def _render_requests(self, totals: list[float]) -> list[str]:
        name = "quaylock_http_requests_total"
        lines = [
            f"# HELP {name} Requests answered, by route template, method and status.",
            f"# TYPE {name} counter",
        ]
        for r, route in enumerate(self.routes):
            for m, method in enumerate(METHODS):
                for c, code in enumerate(CODES):
                    slot = self._requests + (r * len(METHODS) + m) * len(CODES) + c
                    if totals[slot]:
                        labels = (("route", route), ("method", method), ("code", code))
                        lines.append(f"{name}{_labels(labels)} {_number(totals[slot])}")
        name = "quaylock_http_request_duration_seconds"
        lines += [
            f"# HELP {name} Time from a request's arrival to its answer's last "
            "byte, by route template.",
            f"# TYPE {name} histogram",
        ]
        for r, route in enumerate(self.routes):
            base = self._latency + r * (len(LATENCY_BUCKETS) + 2)
            counts = totals[base : base + len(LATENCY_BUCKETS) + 1]
            if not any(counts):
                continue
            running = 0.0
            for bound, count in zip((*LATENCY_BUCKETS, "+Inf"), counts):
                running += count
                le = bound if isinstance(bound, str) else repr(bound)
                labels = (("route", route), ("le", le))
                lines.append(f"{name}_bucket{_labels(labels)} {_number(running)}")
            labels = (("route", route),)
            lines.append(
                f"{name}_sum{_labels(labels)} {_number(totals[base + len(LATENCY_BUCKETS) + 1])}"
            )
            lines.append(f"{name}_count{_labels(labels)} {_number(running)}")
        for offset, name, what in (
            (0, "quaylock_http_request_bytes_total", "Request body bytes read"),
            (1, "quaylock_http_response_bytes_total", "Response body bytes sent"),
        ):
            lines += [
                f"# HELP {name} {what}, by route template.",
                f"# TYPE {name} counter",
            ]
            for r, route in enumerate(self.routes):
                value = totals[self._bytes + 2 * r + offset]
                if value:
                    lines.append(
                        f"{name}{_labels((('route', route),))} {_number(value)}"
                    )
        name = "quaylock_http_requests_in_flight"
        lines += [
            f"# HELP {name} Requests being handled now, all workers together.",
            f"# TYPE {name} gauge",
            f"{name} {_number(totals[self._in_flight])}",
        ]
        return lines


def _alive(pid: str) -> bool:
    """Whether the worker whose file is named `pid` still runs."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError):
        return True
    return True


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
