"""The Grafana dashboard in deploy/grafana asks only for series that
quaylock's /metrics declares, so no panel stays empty for a wrong name."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = (
    Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "quaylock.json"
)
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def test_every_panel_queries_a_series_the_registry_declares(make_server):
    dashboard = json.loads(DASHBOARD.read_text())
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bquaylock_[a-z_]+", target["expr"])
    }
    assert asked, "the dashboard queries nothing"
    server = make_server()
    with server.client() as client:
        text = client.get("/metrics").text
    declared = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    for name in sorted(asked):
        base = next(
            (name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name
        )
        kind = declared.get(name) or declared.get(base)
        assert kind is not None, f"{name} is not in /metrics"
        if base != name:
            assert declared[base] == "histogram", name
    # Every panel has a unique id and a place on the grid.
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all({"x", "y", "w", "h"} <= set(p["gridPos"]) for p in dashboard["panels"])
