"""`tritonize verify`: the deployment gate. One exit code for readiness, interface, golden
outputs, a short smoke load and the metrics that load should have moved."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonize.client import TritonizeClient
from tritonize.errors import TritonizeError
from tritonize.loadtest.checks import response_problem
from tritonize.monitor.figures import Reading
from tritonize.monitor.scrape import METRICS_URL_HINT, default_metrics_url, read
from tritonize.repository.golden import read_golden
from tritonize.triton_models.common import EMBEDDING, LABEL, PROBABILITIES

SMOKE_NEW_TOKENS = 8  # per smoke request to a generation model
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
    if golden["task"] == "generation":
        return _golden_continuations(client, model, golden)
    try:
        outputs = client.infer(model, golden["texts"])
    except TritonizeError as exc:
        return Check("golden outputs", False, str(exc))
    tolerance = golden["tolerance"]
    if golden["task"] == "embedding":
        served = outputs[EMBEDDING].astype(np.float64)
        reference = np.asarray(golden["embeddings"], dtype=np.float64)
        cosine = np.sum(served * reference, axis=1) / (
            np.linalg.norm(served, axis=1) * np.linalg.norm(reference, axis=1)
        )
        worst = float(cosine.min())
        passed = worst >= tolerance["min_cosine"]
        return Check(
            "golden outputs", passed, f"min cosine {worst:.6f} (>= {tolerance['min_cosine']})"
        )
    labels = [label.decode() for label in outputs[LABEL][:, 0]]
    diff = float(np.abs(outputs[PROBABILITIES] - np.asarray(golden["probabilities"])).max())
    same = labels == golden["labels"]
    passed = same and diff <= tolerance["max_probability_diff"]
    verdict = "labels match" if same else f"labels differ: {labels} vs {golden['labels']}"
    return Check("golden outputs", passed, f"{verdict}, max probability diff {diff:.2e}")


def _golden_continuations(client: TritonizeClient, model: str, golden: dict[str, Any]) -> Check:
    """Greedy decoding reproduces PyTorch's continuations: identically, or (fp16/bf16) sharing
    at least `min_common_prefix` of each one's text."""
    least = golden["tolerance"]["min_common_prefix"]
    misses = []
    for record in golden["continuations"]:
        try:
            text = "".join(client.generate(model, record["prompt"], record["max_tokens"]))
        except TritonizeError as exc:
            return Check("golden outputs", False, str(exc))
        shared = _shared_start(text, record["text"])
        if shared < least * max(len(text), len(record["text"])):
            misses.append(f"{record['prompt']!r}: served {text!r}, PyTorch {record['text']!r}")
    agree = "identical to" if least == 1 else f"sharing >= {least:.0%} of their text with"
    detail = f"{len(golden['continuations']) - len(misses)}/{len(golden['continuations'])} "
    detail += f"greedy continuations {agree} PyTorch"
    return Check("golden outputs", not misses, detail + (f"; first: {misses[0]}" if misses else ""))


def _shared_start(a: str, b: str) -> int:
    """How many leading characters `a` and `b` have in common."""
    pairs = zip(a, b, strict=False)  # up to the shorter one
    return next((i for i, (x, y) in enumerate(pairs) if x != y), min(len(a), len(b)))


def _golden_requests(golden: dict[str, Any]) -> int:
    """Requests the golden check sends: one per prompt for generation, else one batch."""
    return len(golden["continuations"]) if golden["task"] == "generation" else 1


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
        if task == "generation":
            for _delta in client.generate(model, text, SMOKE_NEW_TOKENS):
                pass  # an error anywhere in the stream raises
            return None
        return response_problem(client.infer(model, [text]), 1, metadata)
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
