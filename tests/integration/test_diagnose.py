"""`tritonize diagnose` against a real tritonserver: each problem is provoked for real (a model
that fails to load, a killed backend stub, a saturated queue, a leaked shared-memory region, a
drifted window seen by a real Prometheus with the shipped rules) and diagnose must name it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import free_ports, wait_for
from tritonize.client import TritonizeClient
from tritonize.errors import ServerError
from tritonize.monitor.prometheus import LocalPrometheus, PrometheusSource
from tritonize.monitor.scrape import read
from tritonize.processes import is_alive
from tritonize.repository.configs import from_text, to_text
from tritonize.repository.writer import build_repository
from tritonize.server import LocalServer
from tritonize.server.admin import RepositoryAdmin
from tritonize.server.leftovers import SHM_DIR, find_stubs
from tritonize.spec import BuildSpec
from tritonize.tasks.build import StepNames

from .conftest import server_config

CLI = [sys.executable, "-m", "tritonize.cli", "diagnose"]
SENTIMENT, VICTIM, SLOW = "sentiment", "victim", "slow"
SENTIMENT_V1, VICTIM_V1 = StepNames(SENTIMENT, 1), StepNames(VICTIM, 1)  # their builds
SLOW_QUEUE = 2  # the slow model's max_queue_size
SLOW_CONFIG = f"""name: "{SLOW}"
backend: "python"
max_batch_size: 1
input {{ name: "X" data_type: TYPE_FP32 dims: 1 }}
output {{ name: "Y" data_type: TYPE_FP32 dims: 1 }}
dynamic_batching {{ default_queue_policy {{ max_queue_size: {SLOW_QUEUE} }} }}
instance_group {{ count: 1 kind: KIND_CPU }}
"""
SLOW_MODEL = """import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.5)  # a model slower than its traffic
        inputs = [pb_utils.get_input_tensor_by_name(r, "X").as_numpy() for r in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", x)]) for x in inputs]
"""
CYRILLIC = [
    "Мой заказ пришёл с опозданием на два дня, коробка была повреждена.",
    "Как изменить адрес электронной почты в моём аккаунте?",
    "Номер в гостинице был чистым и тихим, рядом с вокзалом.",
    "Центральный банк оставил процентные ставки без изменений.",
]


@pytest.fixture(scope="module")
def diag_repository(tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path) -> Path:
    """Two tiny classifier ensembles (one to watch, one whose stub gets killed) and a slow
    Python model with a short queue."""
    output = tmp_path_factory.mktemp("diagnose") / "model_repository"
    for name in (SENTIMENT, VICTIM):
        build_repository(
            BuildSpec(name=name, task="classification", model=classifier_dir, output=output,
                      max_batch_size=8, max_seq_len=64)
        )  # fmt: skip
    (output / SLOW / "1").mkdir(parents=True)
    (output / SLOW / "config.pbtxt").write_text(SLOW_CONFIG)
    (output / SLOW / "1" / "model.py").write_text(SLOW_MODEL)
    return output


@pytest.fixture(scope="module")
def server(diag_repository: Path) -> Iterator[LocalServer]:
    with LocalServer(server_config(diag_repository)) as running:
        yield running


def run_diagnose(
    server: LocalServer, out: Path, *extra: str, key: bool = True
) -> tuple[int, dict[str, Any], str]:
    """The CLI as a user runs it: exit code, summary.json, printed summary."""
    config = server.config
    command = [*CLI, "--url", config.http_url, "--metrics-url", config.metrics_url,
               "--log-file", str(config.log_path), "--out", str(out), "--sample", "1",
               "--verify-requests", "0", *extra]  # fmt: skip
    env = {**os.environ, "TRITONIZE_API_KEY": config.api_key if key else ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode in (0, 1, 2), result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    return result.returncode, summary, result.stdout


def problems_of(summary: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [problem for problem in summary["problems"] if problem["kind"] == kind]


def ours(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Problems but regions that other servers on this host left behind."""
    return [p for p in summary["problems"] if p["kind"] != "shm-leaked"]


def test_a_healthy_server_has_no_problem_and_everything_is_gathered(
    server: LocalServer, diag_repository: Path, tmp_path: Path
) -> None:
    code, summary, printed = run_diagnose(
        server, tmp_path, "--repository", str(diag_repository), "--verify-requests", "4"
    )
    assert ours(summary) == [], printed
    assert code == (1 if summary["problems"] else 0)
    assert summary["gaps"] == [], printed
    models = json.loads((tmp_path / "models.json").read_text())
    served = [SENTIMENT, SLOW, VICTIM]
    served += [*SENTIMENT_V1.steps, *VICTIM_V1.steps]
    states = {m: s.get("state", "") for m, s in models.items()}
    assert {m: states.get(m) for m in served} == dict.fromkeys(served, "READY")
    # The builds' own ensembles wait on disk: the public models serve them.
    assert {m: s for m, s in states.items() if m not in served and s == "READY"} == {}
    assert json.loads((tmp_path / "config-differences.json").read_text())[SLOW] == []
    verified = json.loads((tmp_path / "verify.json").read_text())
    assert set(verified) == {SENTIMENT, VICTIM}
    assert all(check["passed"] for checks in verified.values() for check in checks), verified
    manifests = json.loads((tmp_path / "manifests.json").read_text())
    assert manifests["runtime_source"].startswith("the stubs' site-packages")
    assert manifests["versions"][f"{SENTIMENT_V1.engine}/1"]["mismatches"] == []
    stubs = json.loads((tmp_path / "stubs.json").read_text())
    assert {s["model"] for s in stubs} >= {SLOW, VICTIM_V1.postprocess}
    assert "model_stats" in json.loads((tmp_path / "statistics.json").read_text())
    assert "nv_inference_count" in (tmp_path / "metrics-after.txt").read_text()
    assert "Started HTTPService" in (tmp_path / "server-log-tail.txt").read_text()
    assert json.loads((tmp_path / "host.json").read_text())["cpus"] >= 1


def test_without_the_key_the_reason_is_missing_and_the_gap_is_named(
    server: LocalServer, diag_repository: Path, tmp_path: Path
) -> None:
    _, summary, _ = run_diagnose(server, tmp_path, "--repository", str(diag_repository), key=False)
    gaps = {gap["part"]: gap["reason"] for gap in summary["gaps"]}
    assert "--api-key" in gaps["repository index"] and "--api-key" in gaps["statistics"]
    assert json.loads((tmp_path / "models.json").read_text())[SLOW]["state"] == "READY"


def test_a_model_that_fails_to_load_is_named_with_its_reason(
    server: LocalServer, diag_repository: Path, tmp_path: Path
) -> None:
    broken = diag_repository / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text(SLOW_CONFIG.replace(SLOW, "broken"))
    (broken / "1" / "model.py").write_text("import a_module_nobody_installed\n")
    admin = RepositoryAdmin(server.config.http_url, server.config.api_key)
    try:
        with pytest.raises(ServerError, match="a_module_nobody_installed"):
            admin.load("broken")
        code, summary, printed = run_diagnose(server, tmp_path / "failed")
    finally:  # the runbook's fix: a model that loads
        (broken / "1" / "model.py").write_text(SLOW_MODEL)
        admin.load("broken")
    assert code == 1
    (problem,) = problems_of(summary, "model-unavailable")
    assert problem["subject"] == "broken"
    assert "a_module_nobody_installed" in problem["detail"]
    assert "[model-unavailable] broken: UNAVAILABLE" in printed
    assert "see docs/runbook.md#model-unavailable" in printed
    # `serve` runs Triton without strict readiness: one broken model leaves the server ready.
    assert problems_of(summary, "server-not-ready") == []
    _, fixed, printed = run_diagnose(server, tmp_path / "fixed")
    assert ours(fixed) == [], printed


def test_a_killed_stub_is_named_though_triton_says_ready(
    server: LocalServer, tmp_path: Path
) -> None:
    step = VICTIM_V1.postprocess
    (stub,) = [s for s in find_stubs(server.shm_prefix) if s.model == step]
    os.kill(stub.pid, signal.SIGKILL)
    admin = RepositoryAdmin(server.config.http_url, server.config.api_key)
    try:
        assert wait_for(lambda: not is_alive(stub.pid), 10)  # a zombie: nobody reaps it
        with TritonizeClient(server.config.http_url) as client:
            assert client.is_model_ready(step)  # what makes it hard to see
        code, summary, printed = run_diagnose(server, tmp_path)
    finally:  # the runbook's fix, as `serve` heals it: unload and load (a dead stub's
        admin.unload(step)  # instance never finishes unloading: no waiting for it)
        admin.load(step)
        admin.load(VICTIM)
    assert code == 1
    (problem,) = problems_of(summary, "stub-dead")
    assert problem["subject"] == step and problem["runbook"] == "docs/runbook.md#stub-dead"
    probes = {p["model"]: p["error"] for p in json.loads((tmp_path / "probes.json").read_text())}
    assert "is not healthy" in probes[VICTIM]  # its requests really fail
    assert probes[SENTIMENT] is None
    assert [p["subject"] for p in ours(summary)] == [step], printed
    with TritonizeClient(server.config.http_url) as client:  # and the fix works
        assert client.classify(VICTIM, ["serving again"])[0].label


def test_a_saturated_queue_is_named(server: LocalServer, tmp_path: Path) -> None:
    import tritonclient.http as httpclient

    stop = threading.Event()

    def flood() -> None:
        client = httpclient.InferenceServerClient(server.config.http_url, network_timeout=30)
        tensor = httpclient.InferInput("X", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 1), np.float32))
        while not stop.is_set():
            try:
                client.infer(SLOW, [tensor])
            except Exception:  # "Exceeds maximum queue size": the point of the flood
                time.sleep(0.02)
        client.close()

    senders = [threading.Thread(target=flood, daemon=True) for _ in range(6)]
    for sender in senders:
        sender.start()
    try:
        full = lambda: read(server.config.metrics_url).total(  # noqa: E731
            "nv_inference_pending_request_count", SLOW) >= SLOW_QUEUE  # fmt: skip
        assert wait_for(full, 20)
        code, summary, printed = run_diagnose(server, tmp_path)
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=30)
    assert code == 1
    (problem,) = problems_of(summary, "queue-saturated")
    assert problem["subject"] == SLOW
    assert f"max_queue_size {SLOW_QUEUE}" in problem["detail"], printed
    assert json.loads((tmp_path / "metrics.json").read_text())[SLOW]["max_queue_size"] == 2


def test_a_leaked_shared_memory_region_is_named_and_live_ones_are_not(
    server: LocalServer, tmp_path: Path
) -> None:
    # Named like a region of a server this process started, which no live tritonserver owns.
    prefix = f"tritonize_{os.getpid()}_{secrets.token_hex(4)}_"
    region = SHM_DIR / f"{prefix}1f0e9d8c-leaked"
    region.write_bytes(b"\0" * 4096)
    try:
        code, summary, printed = run_diagnose(server, tmp_path)
    finally:
        region.unlink()
    assert code == 1
    leaked = {p["subject"]: p for p in problems_of(summary, "shm-leaked")}
    assert f"{SHM_DIR}/{prefix}*" in leaked, printed
    assert region.name in leaked[f"{SHM_DIR}/{prefix}*"]["detail"]
    assert not any(server.shm_prefix in subject for subject in leaked)
    owners = {r["path"]: r["owner"] for r in json.loads((tmp_path / "shm.json").read_text())}
    live = [path for path in owners if server.shm_prefix in path]
    assert live and all(owners[path] for path in live)


def test_the_repository_on_disk_drifting_from_the_served_one_is_named(
    server: LocalServer, diag_repository: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "edited"
    shutil.copytree(diag_repository, copy)
    engine = copy / SENTIMENT_V1.engine
    config = from_text((engine / "config.pbtxt").read_text())
    config.dynamic_batching.max_queue_delay_microseconds += 500
    (engine / "config.pbtxt").write_text(to_text(config))
    manifest = json.loads((engine / "1" / "manifest.json").read_text())
    manifest["versions"]["onnxruntime"] = "1.0.0"
    (engine / "1" / "manifest.json").write_text(json.dumps(manifest))
    with (copy / SENTIMENT_V1.tokenizer / "1" / "tokenizer.json").open("a") as handle:
        handle.write(" ")
    code, summary, printed = run_diagnose(server, tmp_path / "out", "--repository", str(copy))
    assert code == 1
    (mismatch,) = problems_of(summary, "config-mismatch")
    assert mismatch["subject"] == SENTIMENT_V1.engine
    assert "dynamic_batching.max_queue_delay_microseconds" in mismatch["detail"], printed
    (version,) = problems_of(summary, "version-mismatch")
    assert version["subject"] == f"{SENTIMENT_V1.engine}/1"
    assert "onnxruntime 1.0.0 at build" in version["detail"]
    (changed,) = problems_of(summary, "model-files-changed")
    assert "tokenizer.json" in changed["detail"]


def test_a_server_that_is_not_there_exits_2_and_still_writes_the_host(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    command = [*CLI, "--url", f"127.0.0.1:{port}", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "[server-unreachable]" in result.stdout
    assert (tmp_path / "host.json").is_file() and (tmp_path / "shm.json").is_file()


def test_a_drifted_window_is_named_through_its_firing_alert(
    server: LocalServer, tmp_path: Path
) -> None:
    """Cyrillic traffic against a build profiled on English texts fires TritonizeInputDrift in a
    real Prometheus loaded with the shipped rules; diagnose lists it with its runbook section."""
    (port,) = free_ports(1)
    stop = threading.Event()

    def send() -> None:
        with TritonizeClient(server.config.http_url) as client:
            while not stop.is_set():
                client.infer(SENTIMENT, CYRILLIC * 2)
                time.sleep(0.05)

    with LocalPrometheus(f"127.0.0.1:{server.config.metrics_port}", port=port) as prometheus:
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            firing = lambda: [  # noqa: E731
                a for a in PrometheusSource(prometheus.url).query(
                    'ALERTS{alertname="TritonizeInputDrift",alertstate="firing"}')
                if a["metric"].get("model") == SENTIMENT
            ]  # fmt: skip
            assert wait_for(firing, timeout_s=240, step_s=2), "the drift alert never fired"
            code, summary, printed = run_diagnose(server, tmp_path, "--prometheus", prometheus.url)
        finally:
            stop.set()
            sender.join(timeout=30)
    assert code == 1
    drifted = [p for p in problems_of(summary, "alert-firing")
               if p["anchor"] == "tritonizeinputdrift"]  # fmt: skip
    assert drifted and all(SENTIMENT in p["subject"] for p in drifted), printed
    assert "see docs/runbook.md#tritonizeinputdrift" in printed
    assert json.loads((tmp_path / "alerts.json").read_text())
