"""monitoring/: alert rules pass their promtool unit tests; the dashboard is well formed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

MONITORING = Path(__file__).parents[2] / "monitoring"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `apt-get install prometheus` (scripts/setup.sh does it)"
    return path


def test_alert_rules_pass_their_unit_tests() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"], cwd=MONITORING, capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    tests = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())
    tested = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"]}
    assert alerts == tested
    assert {"TritonDown", "TritonFailureRatioHigh", "TritonP95OverSlo", "TritonQueueShareHigh",
            "TritonPendingRequestsGrowing", "TritonBatchSizeCollapsed",
            "TritonTimeToFirstTokenHigh"} <= alerts  # fmt: skip


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "tritonize.json").read_text())
    provisioned = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]["uid"]
    assert len(dashboard["panels"]) >= 10
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == provisioned
        assert all(target["expr"].strip() for target in panel["targets"])
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
