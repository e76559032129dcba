"""A new build made from an existing one with other serving settings: the same weights,
tokenizer and code under the new build's names, and a changed engine config.

`tune` writes its best configuration this way, so that the lifecycle commands roll it out like
any build (`rollout NAME --to N`). The weights are hard links where the file system allows:
builds never change their files, so the new build costs no space for them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tritonize.errors import RepositoryConflictError
from tritonize.progress import note
from tritonize.repository.builds import CONFIG, build_versions, entry_config
from tritonize.repository.checker import check_repository
from tritonize.repository.configs import ModelConfig, from_text, to_text
from tritonize.repository.golden import GOLDEN
from tritonize.repository.install import install, staging_directory
from tritonize.repository.manifest import MANIFEST, seal
from tritonize.tasks.build import StepNames


def derive_build(
    repository: Path,
    name: str,
    source: int,
    version: int,
    edit_engine: Callable[[ModelConfig], None],
    spec_changes: dict[str, Any],
    provenance: dict[str, Any],
) -> list[str]:
    """Install build `version` of NAME: build `source` with `edit_engine` applied to its engine
    config, `spec_changes` written into its manifests' spec and `provenance` beside it (what it
    was derived from, and why). Returns the models written."""
    entry_config(repository, name, source)  # names the builds on disk when `source` is not one
    old, new = StepNames(name, source), StepNames(name, version)
    renames = {o: n for o, n in zip((old.entry, *old.steps), (new.entry, *new.steps), strict=True)}
    renames = {o: n for o, n in renames.items() if (repository / o).is_dir()}

    def refuse_taken() -> None:
        if version in build_versions(repository, name) or any(
            (repository / n).exists() for n in renames.values()
        ):
            raise RepositoryConflictError(
                f"build {version} of `{name}` already exists in `{repository}`: choose another "
                f"--model-version (free: {max(build_versions(repository, name)) + 1})"
            )

    refuse_taken()
    with staging_directory(repository) as staging:
        stage = staging / "repository"
        for model, renamed in renames.items():
            _copy_model(repository / model, stage / renamed, source, version)
            config = _renamed(
                from_text((repository / model / CONFIG).read_text()), renames, version
            )
            config.name = renamed
            if model == old.engine:
                edit_engine(config)
            (stage / renamed / CONFIG).write_text(to_text(config))
            _rewrite_manifest(stage / renamed / str(version), version, spec_changes, provenance)
            seal(stage / renamed / str(version), owner=name)
        if (golden := stage / new.entry / GOLDEN).exists():
            record = json.loads(golden.read_text())
            golden.write_text(json.dumps({**record, "version": version}, indent=1) + "\n")
        check_repository(stage, recover=False)
        models = list(renames.values())
        install(
            staging,
            repository,
            models,
            guard=refuse_taken,
            check=lambda repo: check_repository(repo, recover=False),
        )
    for model in models:
        note(f"{repository / model}")
    return models


def _copy_model(model: Path, target: Path, source: int, version: int) -> None:
    """The model's files but its config, the version directory renamed; no bytecode."""
    target.mkdir(parents=True)
    for item in model.iterdir():
        if item.name == CONFIG or item.name == "__pycache__":
            continue
        renamed = target / (str(version) if item.name == str(source) else item.name)
        if item.is_dir():
            shutil.copytree(
                item, renamed, copy_function=_link_or_copy,
                ignore=shutil.ignore_patterns("__pycache__", MANIFEST),
            )  # fmt: skip
            if (item / MANIFEST).exists():  # rewritten, never shared with the source build
                shutil.copy2(item / MANIFEST, renamed / MANIFEST)
        else:
            shutil.copy2(item, renamed)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def _renamed(config: ModelConfig, renames: dict[str, str], version: int) -> ModelConfig:
    """`config` calling the new build's models: ensemble steps (pinned to the new version) and
    the `ensemble` parameter by which steps find their build's entry."""
    for step in config.ensemble_scheduling.step:
        if step.model_name in renames:
            step.model_name, step.model_version = renames[step.model_name], version
    for parameter in config.parameters.values():
        if parameter.string_value in renames:
            parameter.string_value = renames[parameter.string_value]
    return config


def _rewrite_manifest(
    directory: Path, version: int, spec_changes: dict[str, Any], provenance: dict[str, Any]
) -> None:
    path = directory / MANIFEST
    if not path.exists():
        return
    manifest = json.loads(path.read_text())
    if isinstance(manifest.get("spec"), dict):
        manifest["spec"].update({**spec_changes, "version": version})
    manifest["derived_from"] = provenance
    path.write_text(json.dumps(manifest, indent=2) + "\n")
