"""Every shipped alert links to its own section of docs/runbook.md, and the section exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tritonize.monitor.prometheus import MONITORING_DIR, RULE_FILES

ROOT = Path(__file__).parents[2]
RUNBOOK = ROOT / "docs" / "runbook.md"


def alerts() -> list[dict]:
    """Every alert rule of the files Prometheus loads."""
    return [
        rule
        for name in RULE_FILES
        for group in yaml.safe_load((MONITORING_DIR / name).read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives headings: lowercased, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6} +(.+?) *$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_the_rule_files_hold_the_known_alerts() -> None:
    names = {rule["alert"] for rule in alerts()}
    assert {"TritonDown", "TritonTimeToFirstTokenHigh", "TritonizeProbeFailing",
            "TritonizeInputDrift", "TritonizePredictionDrift"} <= names  # fmt: skip


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_the_alert_links_to_its_own_runbook_section(rule: dict) -> None:
    url = rule["annotations"].get("runbook_url")
    assert url == f"docs/runbook.md#{rule['alert'].lower()}", rule["annotations"]
    path, _, anchor = url.partition("#")
    assert (ROOT / path).resolve() == RUNBOOK.resolve()
    assert anchor in anchors(RUNBOOK.read_text()), f"{url}: no such section in {RUNBOOK.name}"
