"""`tritonize probe` against the real tritonserver: a good build and a broken one (the same
checkpoint with its weights perturbed) both probed with the good build's golden file, and a
real Prometheus with the shipped alert rules: the agreement alert fires for the broken one and
never for the good one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import free_ports
from tritonize.monitor.prometheus import LocalPrometheus
from tritonize.repository.writer import build_repository
from tritonize.server import LocalServer
from tritonize.spec import BuildSpec

from .conftest import CLASSIFIER_MAX_SEQ, server_config

GOOD, BROKEN = "sentiment-good", "sentiment-broken"
CLI = [sys.executable, "-m", "tritonize.cli"]
ALERT = "TritonizeProbeAgreementLow"
FIRING_WITHIN_S = 120  # the rule's `for: 1m`, scrapes and evaluations of 1 s, and slack


def perturbed_copy(checkpoint: Path, dest: Path) -> Path:
    """`checkpoint` with noise of a fifth of each weight tensor's spread added, saved with
    save_pretrained beside the same tokenizer: a build that serves well-formed wrong answers."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for weights in model.parameters():
            if weights.numel() > 1:
                noise = torch.randn(weights.shape, generator=generator)
                weights.add_(noise * 0.2 * float(weights.std()))
    model.save_pretrained(dest)
    for name in checkpoint.iterdir():
        if "token" in name.name or name.name == "vocab.txt":
            shutil.copy2(name, dest / name.name)
    return dest


@pytest.fixture(scope="module")
def probe_repository(tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path) -> Path:
    output = tmp_path_factory.mktemp("probe-repository")
    broken = perturbed_copy(classifier_dir, tmp_path_factory.mktemp("perturbed-classifier"))
    for name, checkpoint in ((GOOD, classifier_dir), (BROKEN, broken)):
        build_repository(
            BuildSpec(name=name, task="classification", model=checkpoint, output=output,
                      max_batch_size=8, max_seq_len=CLASSIFIER_MAX_SEQ)
        )  # fmt: skip
    return output


@pytest.fixture(scope="module")
def probe_server(probe_repository: Path) -> Iterator[LocalServer]:
    server = LocalServer(server_config(probe_repository))
    server.start(timeout_s=120)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def good_golden(probe_repository: Path) -> Path:
    return probe_repository / GOOD / "golden.json"


def probe_once(server: LocalServer, model: str, golden: Path, protocol: str) -> tuple[int, str]:
    url = server.config.http_url if protocol == "http" else server.config.grpc_url
    result = subprocess.run(
        [*CLI, "probe", "--model", model, "--golden", str(golden), "--url", url,
         "--protocol", protocol, "--once"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_one_round_passes_on_the_good_build_and_fails_on_the_broken_one(
    probe_server: LocalServer, good_golden: Path, protocol: str
) -> None:
    records = len(json.loads(good_golden.read_text())["texts"])
    code, output = probe_once(probe_server, GOOD, good_golden, protocol)
    assert code == 0, output
    assert f"agreement 1.000 ({records}/{records} judged), 0 failed" in output
    code, output = probe_once(probe_server, BROKEN, good_golden, protocol)
    assert code == 1, output
    assert "disagree: " in output and "0 failed" in output


def test_a_missing_model_is_a_failure_not_a_disagreement(
    probe_server: LocalServer, good_golden: Path
) -> None:
    code, output = probe_once(probe_server, "not-served", good_golden, "http")
    assert code == 1
    assert "failed: model `not-served`" in output and "nothing judged" in output


def start_prober(server: LocalServer, model: str, golden: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "probe", "--model", model, "--golden", str(golden),
         "--url", server.config.http_url, "--interval", "2s", "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def alerts(prometheus: LocalPrometheus) -> list[dict[str, str]]:
    """The labels of every pending or firing alert."""
    query = urllib.parse.urlencode({"query": "ALERTS"})
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/query?{query}", timeout=5) as response:
        return [r["metric"] for r in json.loads(response.read())["data"]["result"]]


def test_the_agreement_alert_fires_for_the_broken_build_only(
    probe_server: LocalServer, good_golden: Path
) -> None:
    good_port, broken_port, prometheus_port = free_ports(3)
    probers = [
        start_prober(probe_server, GOOD, good_golden, good_port),
        start_prober(probe_server, BROKEN, good_golden, broken_port),
    ]
    jobs = {"probe": f"127.0.0.1:{good_port}", "probe-broken": f"127.0.0.1:{broken_port}"}
    metrics = f"127.0.0.1:{probe_server.config.metrics_port}"
    try:
        with LocalPrometheus(metrics, port=prometheus_port, jobs=jobs) as prometheus:
            seen = wait_for_firing(prometheus, BROKEN)
    finally:
        for prober in probers:
            prober.terminate()
        outputs = [prober.communicate(timeout=10)[0] for prober in probers]
    assert all(p.returncode in (0, -15) for p in probers), outputs  # ended by us, not a crash
    # Only agreement counts here: on a loaded machine a round may outlast 3 intervals of 2 s,
    # and the prober's stall alert going pending then is that alert doing its work.
    good_alerts = [a for a in seen if a.get("model") == GOOD and a["alertname"] == ALERT]
    assert not good_alerts, f"the good build alerted: {good_alerts}\n{outputs[0]}"
    assert "agreement 1.000" in outputs[0] and "agreement 1.000" not in outputs[1]


def wait_for_firing(prometheus: LocalPrometheus, model: str) -> list[dict[str, str]]:
    """Every alert seen (pending or firing) until `ALERT` fires for `model`."""
    seen: list[dict[str, str]] = []
    deadline = time.monotonic() + FIRING_WITHIN_S
    while time.monotonic() < deadline:
        current = alerts(prometheus)
        seen += current
        if any(a["alertname"] == ALERT and a.get("model") == model
               and a["alertstate"] == "firing" for a in current):  # fmt: skip
            return seen
        time.sleep(1)
    raise AssertionError(f"{ALERT} did not fire for `{model}` within {FIRING_WITHIN_S} s: {seen}")
