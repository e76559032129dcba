"""The Grafana dashboard and alert rules against a real Prometheus scraping the real Triton and
a golden prober; `tritonize verify` against the live deployment.

Each panel's query is sent as Grafana sends it, with the dashboard's variables set: the drift
panels to the profiled builds of the session's repository, whose feature metrics the traffic
moves."""

from __future__ import annotations

import json
import math
import re
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
from tritonize.triton_models.features import PROFILE, Profile

from .conftest import CLASSIFIER, EMBEDDER, EMBEDDER_MAX_SEQ, GENERATOR

DASHBOARD = MONITORING_DIR / "grafana" / "dashboards" / "tritonize.json"
CLI = [sys.executable, "-m", "tritonize.cli"]
CHOSEN = {"model": EMBEDDER, "feature": "tokens"}  # the variables for every-panel queries


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


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def substituted(expr: str, variables: dict[str, str]) -> str:
    """`expr` as Grafana sends it, with the dashboard's `$name` variables set to `variables`."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${name}", variables[name])
    assert "$" not in expr, f"a variable without a value: {expr}"
    return expr


def panel_queries() -> list[tuple[str, str]]:
    return [
        (p["title"], substituted(t["expr"], CHOSEN))
        for p in dashboard()["panels"]
        for t in p["targets"]  # a row has none
    ]


@pytest.mark.parametrize(("title", "expr"), panel_queries(), ids=[t for t, _ in panel_queries()])
def test_every_dashboard_panel_returns_data(
    title: str, expr: str, after_traffic: PrometheusSource
) -> None:
    if "nv_gpu_" in expr:
        pytest.skip("GPU metrics exist only on a GPU server")
    result = after_traffic.query(expr)
    assert result, f"panel `{title}` returns no data: {expr}"


def drift_row() -> dict[str, dict]:
    """The panels of the Drift row, by the first word of their titles."""
    panels = dashboard()["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == "Drift")
    following = panels[start + 1 :]
    end = next((i for i, p in enumerate(following) if p["type"] == "row"), len(following))
    return {p["title"].split()[0]: p for p in following[:end]}


def label_values(source: PrometheusSource, query: str, variables: dict[str, str]) -> set[str]:
    """What Grafana offers for a `label_values(selector, label)` variable."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert match, f"not a label_values query: {query}"
    selector, label = match.groups()
    result = source.query(f"group by ({label}) ({substituted(selector, variables)})")
    return {r["metric"][label] for r in result}


def reference_profile(repository: Path, model: str) -> Profile:
    profile = Profile.read(repository / model / "1" / PROFILE)
    assert profile is not None, f"the build of {model} wrote no reference profile"
    return profile


def panel_results(
    source: PrometheusSource, panel: dict, variables: dict[str, str]
) -> dict[str, dict[str, float]]:
    """Each query of `panel`: its series' values by their identifying label (`bin` or
    `feature`), checked to belong to the chosen model."""
    results = {}
    for target in panel["targets"]:
        series = source.query(substituted(target["expr"], variables))
        assert all(
            s["metric"].get("model", variables["model"]) == variables["model"] for s in series
        )
        key = "bin" if "by (bin)" in target["expr"] else "feature"
        results[target["refId"]] = {s["metric"][key]: float(s["value"][1]) for s in series}
    return results


def test_drift_row_variables_offer_each_profiled_model_and_its_features(
    after_traffic: PrometheusSource, repository: Path
) -> None:
    queries = {v["name"]: v["query"] for v in dashboard()["templating"]["list"]}
    assert set(queries) == {"model", "feature"}
    assert {EMBEDDER, CLASSIFIER} <= label_values(after_traffic, queries["model"], {})
    for model in (EMBEDDER, CLASSIFIER):
        features = label_values(after_traffic, queries["feature"], {"model": model})
        assert features == {f.name for f in reference_profile(repository, model).features}


# The traffic of `after_traffic`, per model: a feature and the bin it fills beyond the reference.
FILLED = [
    (EMBEDDER, "tokens", f"<={EMBEDDER_MAX_SEQ}", 0.1),  # 400 words, truncated to the window
    (CLASSIFIER, "truncated", "no", 0.99),  # one short text, over and over
]


@pytest.mark.parametrize(("model", "feature", "filled", "least"), FILLED)
def test_drift_panels_show_the_chosen_model_against_its_profile(
    model: str,
    feature: str,
    filled: str,
    least: float,
    after_traffic: PrometheusSource,
    repository: Path,
) -> None:
    profile = reference_profile(repository, model)
    variables = {"model": model, "feature": feature}
    panels = drift_row()
    assert set(panels) == {"Input", "Prediction", "Observations", "Share"}
    for kind in ("input", "prediction"):
        (drift,) = panel_results(after_traffic, panels[kind.capitalize()], variables).values()
        assert set(drift) == {f.name for f in profile.features if f.kind == kind}
        assert all(math.isfinite(v) and v >= 0 for v in drift.values()), drift
        # The traffic is a text or two repeated: nothing like the reference's lengths.
        assert kind == "prediction" or drift["tokens"] > 1, drift
    (observed,) = panel_results(after_traffic, panels["Observations"], variables).values()
    assert set(observed) == {f.name for f in profile.features}
    assert all(v > 0 for v in observed.values()), observed

    shares = panel_results(after_traffic, panels["Share"], variables)
    (bins,) = (f.bins for f in profile.features if f.name == feature)
    assert shares["B"] == pytest.approx(dict(zip(bins, profile.shares[feature], strict=True)))
    live = shares["A"]
    assert set(live) <= set(bins) and all(0 <= v <= 1.05 for v in live.values()), live
    assert math.isclose(sum(live.values()), 1, abs_tol=0.05), live  # increase() extrapolates
    assert live[filled] >= least > shares["B"][filled], (filled, live, shares["B"])


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
        "TritonizeInputDrift",
        "tritonize:feature_drift:5m",  # the drift panels read the recording rules
        "tritonize:feature_share:5m",
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
