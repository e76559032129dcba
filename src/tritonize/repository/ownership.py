"""Which ensemble owns each model of a repository, and what a build may replace.

A build writes an ensemble and its step models (or one generator). It may replace models that
its own ensemble owns, and a version already there only when asked to (`--overwrite`): the
version may be serving.
"""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import text_format

from tritonize.errors import RepositoryConflictError
from tritonize.repository.builds import build_versions
from tritonize.repository.configs import from_text
from tritonize.repository.manifest import MANIFEST
from tritonize.spec import BuildSpec
from tritonize.tasks import task_named
from tritonize.tasks.build import StepNames


def planned_models(spec: BuildSpec) -> list[str]:
    """The model directories a build of `spec` writes, the ensemble first."""
    return task_named(spec.task.value).build.planned_models(spec)


def refuse_conflicts(spec: BuildSpec, models: list[str]) -> None:
    """Raise `RepositoryConflictError` if `models` clash with another owner or a kept version."""
    repository = Path(spec.output)
    existing = [m for m in models if (repository / m).is_dir()]
    clashes = _clashes(repository, spec.name, existing)
    if clashes:
        raise RepositoryConflictError(
            f"build `{spec.name}` would replace models that another ensemble owns in "
            f"`{repository}`: {'; '.join(clashes)}. Choose another --name"
        )
    taken = [m for m in existing if (repository / m / str(spec.version)).exists()]
    if taken and not spec.overwrite:
        free = max(build_versions(repository, spec.name), default=0) + 1
        raise RepositoryConflictError(
            f"version {spec.version} of {', '.join(f'`{m}`' for m in taken)} already exists in "
            f"`{repository}` and may be serving: pass --overwrite to replace it, or "
            f"--model-version {free} to add a new version beside it"
        )


def owner(repository: Path, model: str) -> str | None:
    """The ensemble (or generator) that built `model`: from its manifests, else the ensembles
    that use it as a step; None when nothing says."""
    for version in _versions(repository / model):
        try:
            manifest = json.loads((version / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        name = manifest.get("owner") or manifest.get("spec", {}).get("name")
        if isinstance(name, str):
            return name
    using = _ensemble_using(repository, model)
    return StepNames.of_entry(using).name if using else None  # a build's ensemble: its name


def _clashes(repository: Path, name: str, existing: list[str]) -> list[str]:
    found = []
    for model in existing:
        owned_by = owner(repository, model)
        if owned_by is None:
            found.append(f"`{model}` (not built by tritonize: no manifest names its ensemble)")
        elif owned_by != name:
            found.append(f"`{model}` belongs to `{owned_by}`")
    return found


def _ensemble_using(repository: Path, model: str) -> str | None:
    for config_path in sorted(repository.glob("*/config.pbtxt")):
        try:
            config = from_text(config_path.read_text())
        except (OSError, text_format.ParseError):  # owns nothing; `check` reports it
            continue
        if config.platform != "ensemble":
            continue
        if config_path.parent.name == model:
            return model
        if any(step.model_name == model for step in config.ensemble_scheduling.step):
            return config_path.parent.name
    return None


def _versions(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
