"""`tritonize verify`: the deployment gate. One exit code for readiness, interface, golden
outputs, a short smoke load and the metrics that load should have moved."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonize.client import TritonizeClient
from tritonize.errors import TritonizeError
from tritonize.monitor.figures import Reading
from tritonize.monitor.scrape import METRICS_URL_HINT, default_metrics_url, read
from tritonize.repository.golden import read_golden
from tritonize.tasks import task_named

METRICS_SETTLE_S = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str

    def describe(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


@dataclass(frozen=True)
class Deployment:
    url: str
    model: str
    golden: Path
    protocol: str = "http"
    metrics_url: str | None = None  # default: http://<url host>:8002/metrics
    smoke_requests: int = 64
    smoke_concurrency: int = 4

    @property
    def metrics(self) -> str:
        return self.metrics_url or default_metrics_url(self.url)


def verify(deployment: Deployment) -> list[Check]:
    """Run every check in order; later checks are skipped once the model is not ready."""
    golden = _read_golden(deployment.golden)
    with TritonizeClient(deployment.url, deployment.protocol) as client:
        ready = _readiness(client, deployment.model)
        if not ready.passed:
            return [ready]
        before = _reading(deployment.metrics)
        checks = [ready, _interface(client, deployment.model, golden)]
        checks.append(_golden(client, deployment.model, golden))
        checks.append(_smoke(deployment, golden))
    checks.append(_metrics(deployment, before, _golden_requests(golden)))
    return checks


def _read_golden(path: Path) -> dict[str, Any]:
    """The golden file, or an error naming it and what is wrong with it."""
    where = f"`--golden` {path}"
    try:
        golden = read_golden(path)
    except OSError as exc:
        raise TritonizeError(f"{where}: cannot read it ({exc.strerror or exc})") from exc
    except (ValueError, TypeError) as exc:  # not JSON, or JSON that is not an object
        raise TritonizeError(f"{where}: not a golden file (a JSON object): {exc}") from exc
    missing = [key for key in ("task", "interface", "tolerance") if key not in golden]
    if missing:
        raise TritonizeError(
            f"{where}: not a golden file written by `tritonize build` (no {', '.join(missing)}); "
            "build writes it as <repository>/<model>/golden.json"
        )
    return golden


def _readiness(client: TritonizeClient, model: str) -> Check:
    if not client.is_server_ready():
        return Check("readiness", False, f"server at {client.url} is not ready")
    if not client.is_model_ready(model):
        return Check("readiness", False, f"model `{model}` is not ready")
    return Check("readiness", True, f"server and `{model}` ready")


def _interface(client: TritonizeClient, model: str, golden: dict[str, Any]) -> Check:
    metadata = client.metadata(model)
    served = {
        kind: [
            {"name": t["name"], "datatype": t["datatype"], "shape": [int(d) for d in t["shape"]]}
            for t in metadata[kind]
        ]
        for kind in ("inputs", "outputs")
    }
    expected = golden["interface"]
    if served != expected:
        return Check("interface", False, f"served {served}, built {expected}")
    versions = metadata.get("versions", [])
    return Check("interface", True, f"tensors match the build; versions served {versions}")


def _golden(client: TritonizeClient, model: str, golden: dict[str, Any]) -> Check:
    passed, detail = task_named(golden["task"]).golden_problems(client, model, golden)
    return Check("golden outputs", passed, detail)


def _golden_requests(golden: dict[str, Any]) -> int:
    """Requests the golden check sends."""
    return task_named(golden["task"]).golden_requests(golden)


def _smoke(deployment: Deployment, golden: dict[str, Any]) -> Check:
    """Concurrent single-text requests; every response must pass the load-test checks."""
    texts = golden["texts"]
    per_client = -(-deployment.smoke_requests // deployment.smoke_concurrency)

    def one_client(offset: int) -> list[tuple[float, str | None]]:
        results: list[tuple[float, str | None]] = []
        with TritonizeClient(deployment.url, deployment.protocol) as client:
            metadata = client.metadata(deployment.model)
            for i in range(offset, offset + per_client):
                start = time.perf_counter()
                problem = _smoke_request(client, deployment.model, golden["task"],
                                         texts[i % len(texts)], metadata)  # fmt: skip
                results.append((time.perf_counter() - start, problem))
        return results

    offsets = range(0, per_client * deployment.smoke_concurrency, per_client)
    with ThreadPoolExecutor(deployment.smoke_concurrency) as pool:
        results = [r for chunk in pool.map(one_client, offsets) for r in chunk]
    problems = [p for _, p in results if p]
    latencies = sorted(seconds * 1000 for seconds, _ in results)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    detail = (
        f"{len(results) - len(problems)}/{len(results)} good, "
        f"p50 {latencies[len(latencies) // 2]:.1f} ms, p95 {p95:.1f} ms"
    )
    if problems:
        detail += f"; first problem: {problems[0]}"
    return Check("smoke load", not problems, detail)


def _smoke_request(
    client: TritonizeClient, model: str, task: str, text: str, metadata: dict[str, Any]
) -> str | None:
    """What is wrong with one smoke request's response, if anything."""
    try:
        return task_named(task).call(client, model, text, metadata)
    except TritonizeError as exc:
        return str(exc)


def _reading(url: str) -> Reading | None:
    try:
        return read(url)
    except TritonizeError:
        return None


def _metrics(deployment: Deployment, before: Reading | None, golden_requests: int) -> Check:
    """Triton's success counter moved by every request sent, and its failure counter not at all.

    Triton counts a request when it releases it, a moment after the client has its response:
    the counters get `METRICS_SETTLE_S` to catch up.
    """
    per_client = -(-deployment.smoke_requests // deployment.smoke_concurrency)
    sent = per_client * deployment.smoke_concurrency + golden_requests
    deadline = time.monotonic() + METRICS_SETTLE_S
    while True:
        after = _reading(deployment.metrics)
        if before is None or after is None:
            return Check(
                "metrics", False, f"cannot scrape {deployment.metrics}; {METRICS_URL_HINT}"
            )
        successes, failures = (
            after.total(name, deployment.model) - before.total(name, deployment.model)
            for name in ("nv_inference_request_success", "nv_inference_request_failure")
        )
        if successes >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    passed = successes >= sent and failures == 0
    return Check(
        "metrics",
        passed,
        f"success count +{successes:.0f} (expected >= {sent}), failure count +{failures:.0f}",
    )
