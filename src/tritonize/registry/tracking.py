"""Log a build as an MLflow run: its spec, validation figures, timings and record files."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tritonize import __version__
from tritonize.registry.client import ResolvedModel, connection

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from tritonize.repository.writer import BuildResult
    from tritonize.spec import BuildSpec

EXPERIMENT_PREFIX = "tritonize/"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def experiment_name(model_name: str) -> str:
    return f"{EXPERIMENT_PREFIX}{model_name}"


def log_build(
    spec: BuildSpec,
    result: BuildResult,
    timings: Mapping[str, float],
    resolved: ResolvedModel | None = None,
) -> str:
    """Record one build as a run of experiment `tritonize/<name>`; return the run id.

    Params: the spec, flattened to strings. Metrics: `max_abs_diff.<case>` per validation case
    (`BuildResult.max_abs_diff`, e.g. `max_abs_diff.sequence_length_64`) and `<step>_seconds`
    per timing. Artifacts: every built model's `manifest.json` and
    `golden.json`, under `repository/` as they lie in the model repository.
    Tags: task, target, model_version, and where the checkpoint came from the registry, its
    version (`registry`) and run (`registry_run_id`).
    """
    from mlflow.entities import Metric, Param, RunTag

    with connection() as client:
        experiment_id = _experiment(client, experiment_name(spec.name))
        tags = _tags(spec, resolved)
        run = client.create_run(experiment_id, run_name=f"{spec.name}-v{spec.version}", tags=tags)
        run_id: str = run.info.run_id
        try:
            client.log_batch(
                run_id,
                metrics=[Metric(k, v, 0, 0) for k, v in _metrics(result, timings).items()],
                params=[Param(k, v) for k, v in flatten_spec(spec).items()],
                tags=[RunTag(k, v) for k, v in tags.items()],
            )
            for local, artifact_path in _records(spec, result):
                client.log_artifact(run_id, str(local), artifact_path)
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
    return run_id


def flatten_spec(spec: BuildSpec) -> dict[str, str]:
    """Every spec field as an MLflow param: strings as they are, the rest as JSON."""
    return {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in spec.to_dict().items()
    }


def _experiment(client: MlflowClient, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException as exc:  # created meanwhile by a concurrent build
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise exc from None
        return str(experiment.experiment_id)


def _tags(spec: BuildSpec, resolved: ResolvedModel | None) -> dict[str, str]:
    tags = {
        "task": spec.task.value,
        "target": spec.target.value,
        "model_version": str(spec.version),
        "tritonize_version": __version__,
    }
    if spec.registry is not None:
        tags["registry"] = spec.registry
    if resolved is not None and resolved.run_id:
        tags["registry_run_id"] = resolved.run_id
    return tags


def _metrics(result: BuildResult, timings: Mapping[str, float]) -> dict[str, float]:
    metrics = {
        metric_name(f"max_abs_diff.{case}"): float(diff)
        for case, diff in result.max_abs_diff.items()
    }
    metrics.update({metric_name(f"{step}_seconds"): float(s) for step, s in timings.items()})
    return metrics


def metric_name(name: str) -> str:
    """`name` with each run of other characters than letters, digits, `_.-` as one `_`."""
    return _UNSAFE.sub("_", name).strip("_")


def _records(spec: BuildSpec, result: BuildResult) -> list[tuple[Path, str]]:
    """(file, artifact folder) for each manifest.json and golden.json the build wrote, in every
    model it wrote and in the public model `spec.name` (which may point at the build)."""
    version = str(spec.version)
    candidates: list[tuple[Path, str]] = []
    for model in dict.fromkeys([*result.models, spec.name]):
        folder = result.repository / model
        candidates.append((folder / version / "manifest.json", f"repository/{model}/{version}"))
        candidates.append((folder / "golden.json", f"repository/{model}"))
    return [(path, artifact) for path, artifact in candidates if path.is_file()]
