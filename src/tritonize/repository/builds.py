"""Builds, and the public model that points at the one serving.

Build N of NAME lives under names of its own (`NAME.vN`, `NAME_tokenizer.vN`, ...: see
`tasks.build.StepNames`), so two builds never share a model, a config or a step. Clients call
NAME: a copy of the serving build's entry config, renamed, whose `version_policy` admits that
build's number only, and whose version directory is a link to the build's. Triton reports that
number as the response's `model_version`, reads the pointer again at a restart (it is the
recorded state of what serves), and moves NAME to another build by loading the rewritten
config: the old one answers until the new one is ready, then drains.

`NAME/serving.json` keeps the order in which builds served, which `rollback` follows.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from tritonize.errors import RepositoryError
from tritonize.repository.configs import ModelConfig, from_text, to_text
from tritonize.repository.golden import GOLDEN
from tritonize.tasks.build import BUILD_MARK, StepNames

HISTORY = "serving.json"
CANARY = "canary.json"  # NAME routes between two builds (repository/canary.py)
CONFIG = "config.pbtxt"


@dataclass(frozen=True)
class Pointer:
    """What the public model NAME serves, as its config says."""

    name: str
    version: int


def build_versions(repository: Path, name: str) -> list[int]:
    """The build numbers of NAME on disk (an entry `NAME.vN` with its config), ascending."""
    found = []
    for directory in repository.glob(f"{name}{BUILD_MARK}*"):
        entry = StepNames.of_entry(directory.name)
        if entry.name == name and entry.version and (directory / CONFIG).is_file():
            found.append(entry.version)
    return sorted(found)


def startup_models(repository: Path) -> list[str]:
    """What a server loads at start: every model but the builds (`NAME.vN`, ...), which the
    public models that point at them bring along; builds that do not serve stay on disk."""
    return sorted(
        config.parent.name
        for config in repository.glob(f"*/{CONFIG}")
        if StepNames.of_entry(config.parent.name).version is None
    )


def serving(repository: Path, name: str) -> Pointer | None:
    """The build NAME points at, or None where NAME is not a pointer (absent, or written
    before builds had names of their own)."""
    path = repository / name / CONFIG
    try:
        config = from_text(path.read_text())
    except (OSError, text_format.ParseError):
        return None
    versions = list(config.version_policy.specific.versions)
    entries = [StepNames.of_entry(s.model_name) for s in config.ensemble_scheduling.step]
    if len(versions) != 1 or any(e.version is None for e in entries):
        return None
    return Pointer(name, versions[0])


def pointer_config(entry: ModelConfig, name: str, version: int) -> ModelConfig:
    """The public config of NAME serving `entry`, build `version`."""
    config = ModelConfig()
    config.CopyFrom(entry)
    config.name = name
    config.version_policy.specific.versions[:] = [version]
    return config


def entry_config(repository: Path, name: str, version: int) -> ModelConfig:
    entry = StepNames(name, version).entry
    path = repository / entry / CONFIG
    try:
        return from_text(path.read_text())
    except OSError:
        built = ", ".join(map(str, build_versions(repository, name))) or "none"
        raise RepositoryError(
            [
                f"build {version} of `{name}` is not in `{repository}` (no {entry}/{CONFIG}); "
                f"builds on disk: {built}"
            ]
        ) from None
    except text_format.ParseError as exc:
        raise RepositoryError([f"`{path}` does not parse: {exc}"]) from None


def point(repository: Path, name: str, version: int) -> Pointer:
    """Make NAME serve build `version`: link its version directory, copy its golden file,
    then replace the config (the one write that moves traffic, atomic), and record it."""
    entry = StepNames(name, version).entry
    config = pointer_config(entry_config(repository, name, version), name, version)
    public = repository / name
    public.mkdir(exist_ok=True)
    link = public / str(version)
    if not link.is_symlink():
        if link.exists():  # a real directory: a layout this function did not write
            raise RepositoryError([f"`{link}` is a directory, not a link to `{entry}`"])
        os.symlink(Path("..") / entry / str(version), link, target_is_directory=True)
    if (golden := repository / entry / GOLDEN).exists():
        replace_file(public / GOLDEN, golden.read_bytes())
    replace_file(public / CONFIG, to_text(config).encode())
    _record(public, version)
    return Pointer(name, version)


def version_problems(repository: Path, configs: dict[str, ModelConfig]) -> list[str]:
    """What could serve a request from two builds at once, or a pointer at no build: an
    ensemble step on "the latest" of several versions, a pin on a version not on disk, a
    public model whose config is not its build's."""
    problems = []
    for name, config in configs.items():
        pointer = serving(repository, name)
        # A pointer is a copy of its build's entry: their steps are checked once, as the entry's.
        for step in config.ensemble_scheduling.step if pointer is None else ():
            versions = _version_dirs(repository / step.model_name)
            where = f"ensemble `{name}` step `{step.model_name}`"
            if step.model_version == -1 and len(versions) > 1:
                problems.append(
                    f"{where} runs the latest of versions {versions}: one request could meet "
                    "steps of two builds; pin model_version (builds of this tritonize do)"
                )
            elif step.model_version != -1 and step.model_version not in versions:
                problems.append(f"{where} pins version {step.model_version}, which is not on disk")
        if (repository / name / CANARY).exists():
            continue  # NAME is a canary's router, not a copy of its build's config
        if pointer is not None and (problem := _pointer_problem(repository, config, pointer)):
            problems.append(problem)
    return problems


def _pointer_problem(repository: Path, config: ModelConfig, pointer: Pointer) -> str | None:
    entry = StepNames(pointer.name, pointer.version).entry
    try:
        expected = pointer_config(entry_config(repository, pointer.name, pointer.version),
                                  pointer.name, pointer.version)  # fmt: skip
    except RepositoryError:
        return f"`{pointer.name}` points at build {pointer.version}, which is not on disk ({entry})"
    if expected != config:
        return (
            f"`{pointer.name}/config.pbtxt` is not build {pointer.version}'s config (`{entry}`): "
            f"edited by hand? `tritonize rollout {pointer.name} --to {pointer.version}` rewrites it"
        )
    if not (repository / pointer.name / str(pointer.version)).is_dir():
        return f"`{pointer.name}/{pointer.version}` is missing: the link to `{entry}`"
    return None


def _version_dirs(model: Path) -> list[int]:
    return sorted(int(p.name) for p in model.glob("*") if p.name.isdigit() and p.is_dir())


def history(repository: Path, name: str) -> list[dict[str, Any]]:
    """The builds NAME served, oldest first: `{"version": N, "since": ISO time}`."""
    try:
        record = json.loads((repository / name / HISTORY).read_text())
    except (OSError, ValueError):
        return []
    return [h for h in record.get("history", []) if isinstance(h, dict)]


def previous(repository: Path, name: str) -> int | None:
    """The build that served before the serving one, if it is still on disk."""
    current = serving(repository, name)
    on_disk = set(build_versions(repository, name))
    for entry in reversed(history(repository, name)):
        version = entry.get("version")
        if current and version != current.version and version in on_disk:
            return int(version)
    return None


def unlink_other_versions(repository: Path, name: str, keep: int) -> None:
    """Remove NAME's links to builds other than `keep` (after Triton let go of them)."""
    for link in (repository / name).iterdir():
        if link.is_symlink() and link.name != str(keep):
            link.unlink()


def remove_build(repository: Path, name: str, version: int) -> list[str]:
    """Delete build `version`'s models from disk; returns their names."""
    names = StepNames(name, version)
    removed = []
    for model in (names.entry, *names.steps):
        if (repository / model).is_dir():
            shutil.rmtree(repository / model)
            removed.append(model)
    link = repository / name / str(version)
    if link.is_symlink():
        link.unlink()
    return removed


def _record(public: Path, version: int) -> None:
    path = public / HISTORY
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {"history": []}
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    kept = record.get("history", [])
    if not kept or kept[-1].get("version") != version:  # a pointer rewritten in place is no move
        record["history"] = [*kept, {"version": version, "since": now}][-100:]
    record["serving"] = version
    replace_file(path, (json.dumps(record, indent=1) + "\n").encode())


def replace_file(path: Path, data: bytes) -> None:
    """Write `path` by rename: Triton (or a reader) sees the old file or the new, never half."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
