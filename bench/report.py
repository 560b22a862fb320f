"""From per-round measurements to rows, targets, a table and JSON.

A row is one figure for both servers: its median over the rounds, the
smallest and largest round, and the ratio quaylock / Distribution of the
medians. `better` says which way is good ("higher" for throughput, "lower"
for latency, memory and CPU), so a ratio above 1 is a win on a throughput
row and a loss on a latency row.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

SERVERS = ("quaylock", "distribution")
MIB = 1024 * 1024
GIB = 1024 * MIB

RATE_UNITS = {
    "blob": ("blobs/s", 1),
    "manifest": ("manifests/s", 1),
    "request": ("req/s", 1),
    "byte": ("MiB/s", MIB),
}


def build_rows(phases, results: dict) -> list[dict]:
    """Rows for every phase, in run order: throughput (and latency), then
    the server's peak memory and CPU per unit of work.

    Args:
        phases: the `workloads.Phase` list that ran.
        results: server name -> phase id -> list of per-round measurements.
    """
    rows, resources = [], []
    for phase in phases:
        unit, scale = RATE_UNITS[phase.unit]
        rows.append(
            _row(
                phase.id, phase.label, unit, "higher", results, phase.id,
                lambda m, s=scale: m["units"] / s / m["wall_s"],
            )
        )  # fmt: skip
        if phase.latency:
            for pct in ("p50", "p99"):
                rows.append(
                    _row(
                        f"{phase.id}.{pct}", f"{phase.label}: {pct} latency",
                        "ms", "lower", results, phase.id,
                        lambda m, key=f"{pct}_ms": m[key],
                    )
                )  # fmt: skip
        resources.append(
            _row(
                f"{phase.id}.peak_rss", f"{phase.label}: server peak RSS",
                "MiB", "lower", results, phase.id, lambda m: m["peak_rss_mib"],
            )
        )  # fmt: skip
        # CPU per GiB moved, or per operation: comparable across servers
        # even when their phases took different times.
        per_gib = phase.unit == "byte"
        resources.append(
            _row(
                f"{phase.id}.cpu", f"{phase.label}: server CPU",
                "CPU s/GiB" if per_gib else f"CPU us/{phase.unit}",
                "lower", results, phase.id,
                lambda m, g=per_gib: m["server_cpu_s"] / (m["units"] / GIB)
                if g else m["server_cpu_s"] * 1e6 / m["units"],
            )
        )  # fmt: skip
    return rows + resources


def _row(row_id, label, unit, better, results, phase_id, value: Callable) -> dict:
    row = {"id": row_id, "label": label, "unit": unit, "better": better}
    for server in SERVERS:
        values = [value(m) for m in results[server][phase_id]]
        row[server] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "rounds": values,
        }
    q, d = row["quaylock"]["median"], row["distribution"]["median"]
    row["ratio"] = q / d if d else None
    return row


def client_overhead(phases, results: dict, cpus: int) -> list[dict]:
    """How busy the load generators were: client CPU seconds over the
    phase's wall time (1.0 = one core); the machine's share used by client
    and server together (1.0 = every core); and the cores that other
    programs on the machine took meanwhile (noise in the figures)."""
    found = []
    for phase in phases:
        entry = {"id": phase.id}
        for server in SERVERS:
            rounds = results[server][phase.id]
            entry[server] = {
                "client_cores": statistics.median(
                    m["client_cpu_s"] / m["wall_s"] for m in rounds
                ),
                "machine_share": statistics.median(
                    (m["client_cpu_s"] + m["server_cpu_s"]) / m["wall_s"] / cpus
                    for m in rounds
                ),
                "other_cores": statistics.median(
                    m["other_cpu_s"] / m["wall_s"] for m in rounds
                ),
            }
        found.append(entry)
    return found


# Targets from issue 3: what quaylock should reach against Distribution.


def evaluate_targets(rows: list[dict]) -> list[dict]:
    by_id = {row["id"]: row for row in rows}

    def q(row_id):
        return by_id[row_id]["quaylock"]["median"]

    def d(row_id):
        return by_id[row_id]["distribution"]["median"]

    def ratio(row_id):
        return by_id[row_id]["ratio"] or 0.0

    checks = [
        (
            "manifest GET at 64 connections >= 5x Distribution, with lower p99",
            ratio("get_manifest_c64") >= 5
            and q("get_manifest_c64.p99") < d("get_manifest_c64.p99"),
            f"{ratio('get_manifest_c64'):.2f}x; p99 {q('get_manifest_c64.p99'):.2f} ms "
            f"vs {d('get_manifest_c64.p99'):.2f} ms",
        ),
        (
            "large-blob push >= 3x",
            ratio("push_large") >= 3,
            f"{ratio('push_large'):.2f}x",
        ),
        (
            "small-blob push >= 3x (1 and 8 clients)",
            min(ratio("push_small_1"), ratio("push_small_8")) >= 3,
            f"{ratio('push_small_1'):.2f}x with 1 client, "
            f"{ratio('push_small_8'):.2f}x with 8",
        ),
        (
            "manifest push >= 3x",
            ratio("push_manifests") >= 3,
            f"{ratio('push_manifests'):.2f}x",
        ),
        (
            "pull >= 1x with less CPU per byte (1 and 4 clients)",
            min(ratio("pull_large_1"), ratio("pull_large_4")) >= 1
            and max(ratio("pull_large_1.cpu"), ratio("pull_large_4.cpu")) < 1,
            f"{ratio('pull_large_1'):.2f}x / {ratio('pull_large_4'):.2f}x; CPU per "
            f"byte {ratio('pull_large_1.cpu'):.2f}x / {ratio('pull_large_4.cpu'):.2f}x",
        ),
        (
            f"peak memory during the {by_id['push_huge']['label']} <= 100 MiB",
            max(by_id["push_huge.peak_rss"]["quaylock"]["rounds"]) <= 100,
            f"{max(by_id['push_huge.peak_rss']['quaylock']['rounds']):.0f} MiB "
            "(largest round)",
        ),
    ]
    return [{"target": t, "met": bool(met), "evidence": e} for t, met, e in checks]


# Text


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(stats: dict, rounds: int) -> str:
    if rounds == 1:
        return fmt(stats["median"])
    return f"{fmt(stats['median'])} ({fmt(stats['min'])}-{fmt(stats['max'])})"


def render(report: dict) -> str:
    """The report as Markdown tables, for a terminal or a pull request."""
    rounds = report["settings"]["rounds"]
    out = [
        f"quaylock {report['servers']['quaylock']['version']} vs "
        f"{report['servers']['distribution']['version']}; {rounds} round(s); "
        f"cells are median (min-max) over rounds; ratio = quaylock / Distribution",
        "",
    ]
    head = ["row", "unit", "quaylock", "Distribution", "ratio", "better"]
    resource_ids = (".peak_rss", ".cpu")
    main = [r for r in report["rows"] if not r["id"].endswith(resource_ids)]
    resources = [r for r in report["rows"] if r["id"].endswith(resource_ids)]
    out += _table(head, [_row_cells(r, rounds) for r in main])
    out += ["", "Server resources per phase (whole process tree)", ""]
    out += _table(head, [_row_cells(r, rounds) for r in resources])
    out += ["", "Client overhead (median; cores = CPU s / wall s)", ""]
    out += _table(
        ["phase", "client cores (q)", "client cores (D)", "client+server (q)",
         "client+server (D)", "other load (q)", "other load (D)"],
        [
            [
                c["id"],
                fmt(c["quaylock"]["client_cores"]),
                fmt(c["distribution"]["client_cores"]),
                f"{c['quaylock']['machine_share']:.0%}",
                f"{c['distribution']['machine_share']:.0%}",
                fmt(c["quaylock"]["other_cores"]),
                fmt(c["distribution"]["other_cores"]),
            ]
            for c in report["client_overhead"]
        ],
    )  # fmt: skip
    limits = report["machine"]["limits"]
    machine = report["machine"]
    out += [
        "",
        f"Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_mib']} MiB, Linux {machine['kernel']}, "
        f"Python {machine['python']}",
        f"Limits: sha256 {fmt(limits['sha256_mb_s'])} MB/s; disk write+fsync "
        f"{fmt(limits['disk_write_fsync_mb_s'])} MB/s; loopback TCP "
        f"{fmt(limits['loopback_tcp_mb_s'])} MB/s",
        "",
        "Targets",
        "",
    ]
    out += _table(
        ["target", "met", "evidence"],
        [
            [t["target"], "yes" if t["met"] else "NO", t["evidence"]]
            for t in report["targets"]
        ],
    )
    return "\n".join(out)


def _row_cells(row: dict, rounds: int) -> list[str]:
    ratio = row["ratio"]
    return [
        row["label"],
        row["unit"],
        _cell(row["quaylock"], rounds),
        _cell(row["distribution"], rounds),
        "-" if ratio is None else f"{ratio:.2f}x",
        row["better"],
    ]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines
