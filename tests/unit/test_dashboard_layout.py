"""The Grafana dashboard without a server: its variables are defined, its panels do not overlap,
and the drift row reads Prometheus' recording rules instead of recomputing them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

MONITORING = Path(__file__).parents[2] / "monitoring"
DASHBOARD = json.loads((MONITORING / "grafana" / "dashboards" / "tritonize.json").read_text())


def drift_panels() -> list[dict]:
    """The panels after the Drift row, up to the next row."""
    panels = DASHBOARD["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == "Drift")
    following = panels[start + 1 :]
    end = next((i for i, p in enumerate(following) if p["type"] == "row"), len(following))
    return following[:end]


def test_every_variable_a_panel_uses_is_defined() -> None:
    defined = {variable["name"] for variable in DASHBOARD["templating"]["list"]}
    texts = [panel["title"] for panel in DASHBOARD["panels"]]
    texts += [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]
    texts += [variable["query"] for variable in DASHBOARD["templating"]["list"]]
    used = {name for text in texts for name in re.findall(r"\$(\w+)", text)}
    assert used == defined


def test_no_two_panels_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_the_drift_row_reads_the_recording_rules() -> None:
    rules = yaml.safe_load((MONITORING / "drift.yml").read_text())["groups"]
    recorded = {rule["record"] for group in rules for rule in group["rules"] if "record" in rule}
    panels = drift_panels()
    assert len(panels) == 4
    for target in (target for panel in panels for target in panel["targets"]):
        assert set(re.findall(r"tritonize:\w+:\w+", target["expr"])) & recorded, target["expr"]
        assert "increase(" not in target["expr"] and "rate(" not in target["expr"]
