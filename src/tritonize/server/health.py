"""Does every public model really answer? One tiny real request each.

Triton's readiness stays 200 while a model's stub is dead, so it cannot tell an orchestrator
whether the server serves. This check can: it sends each public model (an ensemble or a
generator, not a step) a one-text request of its task, or asks a generator for one token.
Models of no tritonize task get a readiness check only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tritonize.errors import TritonizeError
from tritonize.server.admin import RepositoryAdmin
from tritonize.tasks import served_task
from tritonize.tasks.build import StepNames

PROBE_TEXT = "health check"


@dataclass(frozen=True)
class Probe:
    model: str
    error: str | None  # None: it answered
    seconds: float


def public_models(http_url: str, api_key: str) -> list[str]:
    """Every model in the repository index that is not an ensemble's step (needs the key)."""
    from tritonize.client import TritonizeClient

    states = RepositoryAdmin(http_url, api_key).states()
    # A build's own entry (NAME.vN) answers through NAME; one not loaded waits on disk for a
    # rollout and is no failure.
    names = sorted(
        name
        for name, state in states.items()
        if StepNames.of_entry(name).version is None or state == "READY"
    )
    # A step is named after its ensemble: known so even while the ensemble is not loaded.
    steps = {step for name in states for step in _step_names_of(name)} & set(states)
    with TritonizeClient(http_url, "http") as client:
        for name in names:
            try:
                config = client.config(name)
            except TritonizeError:  # not loaded: it stays in the list, and fails its probe
                continue
            steps.update(_step_names(config))
    return [name for name in names if name not in steps]


def probe(http_url: str, models: list[str], timeout_s: float = 10.0) -> list[Probe]:
    """Send each model its tiny request; every answer or error, in order."""
    from tritonize.client import TritonizeClient

    results = []
    with TritonizeClient(http_url, "http", timeout_s=timeout_s) as client:
        for model in models:
            started = time.perf_counter()
            try:
                _ask(client, model)
                error = None
            except TritonizeError as exc:
                error = str(exc)
            results.append(Probe(model, error, time.perf_counter() - started))
    return results


def _ask(client: Any, model: str) -> None:
    """A tritonize model gets a real request of its task (a generator, one token); any other
    model, a readiness check."""
    metadata = client.metadata(model)
    task = served_task(metadata)
    if "text_input" in {i["name"] for i in metadata["inputs"]}:
        "".join(client.generate(model, PROBE_TEXT, max_tokens=1))
    elif task is not None:
        problem = task.call(client, model, PROBE_TEXT, metadata)
        if problem:
            raise TritonizeError(f"model `{model}` answered wrongly: {problem}")
    elif not client.is_model_ready(model):
        raise TritonizeError(f"model `{model}` is not ready")


def _step_names_of(ensemble: str) -> tuple[str, ...]:
    return StepNames.of_entry(ensemble).steps


def _step_names(config: dict[str, Any]) -> list[str]:
    steps = config.get("ensemble_scheduling", {}).get("step", [])
    return [step["model_name"] for step in steps]
