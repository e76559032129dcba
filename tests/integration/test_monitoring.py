"""The Grafana dashboard and alert rules against a real Prometheus scraping the real Triton and
a golden prober; `tritonize verify` against the live deployment."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from helpers import free_ports
from tritonize.client import TritonizeClient
from tritonize.monitor.probe import ProbeSettings, probe
from tritonize.monitor.prometheus import MONITORING_DIR, LocalPrometheus, PrometheusSource
from tritonize.server import LocalServer

from .conftest import CLASSIFIER, EMBEDDER, GENERATOR

DASHBOARD = MONITORING_DIR / "grafana" / "dashboards" / "tritonize.json"
CLI = [sys.executable, "-m", "tritonize.cli"]


@pytest.fixture(scope="module")
def prober(server: LocalServer, repository: Path) -> Iterator[str]:
    """`tritonize probe` of the embedder, a round a second: its metrics' host:port."""
    (port,) = free_ports(1)
    settings = ProbeSettings(
        url=server.config.http_url, model=EMBEDDER, golden=repository / EMBEDDER / "golden.json",
        interval_s=1.0, metrics_port=port,
    )  # fmt: skip
    stop = threading.Event()
    rounds = threading.Thread(
        target=probe, args=(settings, lambda line: None), kwargs={"stop": stop}
    )
    rounds.start()
    yield f"127.0.0.1:{port}"
    stop.set()
    rounds.join(timeout=30)


@pytest.fixture(scope="module")
def prometheus(server: LocalServer, prober: str) -> Iterator[LocalPrometheus]:
    """A real Prometheus scraping the session's Triton and the golden prober every second."""
    (port,) = free_ports(1)
    target = f"127.0.0.1:{server.config.metrics_port}"
    with LocalPrometheus(target, port=port, jobs={"probe": prober}) as running:
        yield running


@pytest.fixture(scope="module")
def after_traffic(server: LocalServer, prometheus: LocalPrometheus) -> PrometheusSource:
    """Some traffic (a truncation included), then time for two scrapes."""
    with TritonizeClient(server.config.http_url) as client:
        for _ in range(20):
            client.embed(EMBEDDER, ["monitoring traffic", "word " * 400])
            client.classify(CLASSIFIER, ["monitoring traffic"])
            list(client.generate(GENERATOR, "Once upon a time", max_tokens=8, stream=True))
    time.sleep(3)
    return PrometheusSource(prometheus.url)


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


@pytest.mark.parametrize(("title", "expr"), panel_queries(), ids=[t for t, _ in panel_queries()])
def test_every_dashboard_panel_returns_data(
    title: str, expr: str, after_traffic: PrometheusSource
) -> None:
    if "nv_gpu_" in expr:
        pytest.skip("GPU metrics exist only on a GPU server")
    result = after_traffic.query(expr)
    assert result, f"panel `{title}` returns no data: {expr}"


def test_alert_rules_load_in_prometheus(
    after_traffic: PrometheusSource, prometheus: LocalPrometheus
) -> None:
    with urllib.request.urlopen(f"{after_traffic.url}/api/v1/rules") as response:
        groups = json.loads(response.read())["data"]["groups"]
    names = {rule["name"] for group in groups for rule in group["rules"]}
    assert names == shipped_rules(prometheus.config()["rule_files"])
    assert {
        "TritonBatchSizeCollapsed",
        "TritonizeProbeAgreementLow",
        "TritonizeProbeFailing",
    } <= names
    assert all(rule["health"] == "ok" for group in groups for rule in group["rules"])


def shipped_rules(rule_files: list[str]) -> set[str]:
    """Every alert and recording rule the files name."""
    return {
        rule.get("alert") or rule["record"]
        for path in rule_files
        for group in yaml.safe_load(Path(path).read_text())["groups"]
        for rule in group["rules"]
    }


def test_verify_passes_on_the_live_deployment(server: LocalServer, repository: Path) -> None:
    golden = repository / EMBEDDER / "golden.json"
    result = subprocess.run(
        [*CLI, "verify", "--model", EMBEDDER, "--golden", str(golden),
         "--url", server.config.grpc_url, "--protocol", "grpc",
         "--metrics-url", server.config.metrics_url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("readiness", "interface", "golden outputs", "smoke load", "metrics"):
        assert f"PASS  {check}" in result.stdout


def test_verify_fails_on_a_wrong_golden_file(
    server: LocalServer, repository: Path, tmp_path: Path
) -> None:
    golden = json.loads((repository / CLASSIFIER / "golden.json").read_text())
    golden["labels"] = ["not-a-label"] * len(golden["labels"])
    path = tmp_path / "golden.json"
    path.write_text(json.dumps(golden))
    result = subprocess.run(
        [*CLI, "verify", "--model", CLASSIFIER, "--golden", str(path),
         "--url", server.config.http_url, "--metrics-url", server.config.metrics_url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "FAIL  golden outputs: labels differ" in result.stdout
    assert "PASS  smoke load" in result.stdout
