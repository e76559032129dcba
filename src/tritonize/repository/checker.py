"""`tritonize check`: every config parses, every file is there, every ensemble is wired right."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tritonize.engine.compat import EngineRuntime, plan_problems
from tritonize.errors import RepositoryError
from tritonize.progress import note
from tritonize.repository.builds import serving, version_problems
from tritonize.repository.configs import ModelConfig, from_text
from tritonize.repository.install import recover as recover_interrupted_builds
from tritonize.repository.manifest import integrity_problems, read_manifest

# Files each kind of model needs in every version directory.
_MODEL_FILES = {
    "python": "model.py",
    "onnxruntime_onnx": "model.onnx",
    "tensorrt_plan": "model.plan",
}


@dataclass(frozen=True)
class TensorSpec:
    dtype: int
    dims: tuple[int, ...]

    def describe(self) -> str:
        return f"{mc.DataType.Name(self.dtype)} {list(self.dims)}"

    def accepts(self, other: TensorSpec) -> bool:
        """Same dtype and rank; each dim equal or variable (-1) on either side."""
        return (
            self.dtype == other.dtype
            and len(self.dims) == len(other.dims)
            and all(a == b or -1 in (a, b) for a, b in zip(self.dims, other.dims, strict=True))
        )


def load_configs(
    repository: Path, hashes: bool = False
) -> tuple[dict[str, ModelConfig], list[str]]:
    """Parse every `<model>/config.pbtxt` and compare each version's files with its manifest
    (`hashes`: by sha256 alone); return the configs and the problems found."""
    if not repository.is_dir():
        return {}, [f"`{repository}` is not a directory"]
    configs: dict[str, ModelConfig] = {}
    problems: list[str] = []
    models = (p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))
    for directory in sorted(models):
        path = directory / "config.pbtxt"
        if not path.exists():
            problems.append(f"model `{directory.name}`: no config.pbtxt")
            continue
        try:
            config = from_text(path.read_text())
        except text_format.ParseError as exc:
            problems.append(f"model `{directory.name}`: config.pbtxt does not parse: {exc}")
            continue
        if config.name and config.name != directory.name:
            problems.append(
                f"model `{directory.name}`: config name `{config.name}` differs from its directory"
            )
        configs[directory.name] = config
        problems += _check_files(directory, config, hashes)
    if not configs and not problems:
        problems.append(f"`{repository}` holds no models")
    return configs, problems


def check_repository(
    repository: Path,
    runtime: EngineRuntime | None = None,
    *,
    hashes: bool = False,
    recover: bool = True,
) -> dict[str, ModelConfig]:
    """Return the parsed configs, or raise `RepositoryError` listing every problem.

    With a `runtime`, TensorRT plans are also checked to load under it. With `recover`, an
    install that a killed build left half done is rolled back first. With `hashes`, every
    file is hashed rather than trusted on size and mtime.
    """
    if recover:
        for message in recover_interrupted_builds(Path(repository)):
            note(message)
    configs, problems = load_configs(Path(repository), hashes)
    for name, config in configs.items():
        # A public model that points at a build is its entry's config (version_problems
        # says so where it is not): its wiring is checked once, as the entry's.
        if config.platform == "ensemble" and serving(Path(repository), name) is None:
            problems += check_ensemble(name, config, configs)
        if runtime is not None and serves_a_plan(config):
            problems += _check_plans(Path(repository) / name, runtime)
    problems += version_problems(Path(repository), configs)
    if problems:
        raise RepositoryError(problems)
    return configs


def check_ensemble(name: str, ensemble: ModelConfig, configs: dict[str, ModelConfig]) -> list[str]:
    """Each step's inputs exist upstream with the dtype and dims it expects."""
    problems: list[str] = []
    available = {t.name: _spec(t) for t in ensemble.input}
    for index, step in enumerate(ensemble.ensemble_scheduling.step, start=1):
        where = f"ensemble `{name}` step {index} (`{step.model_name}`)"
        model = configs.get(step.model_name)
        if model is None:
            problems.append(f"{where}: model `{step.model_name}` is not in the repository")
            continue
        if model.max_batch_size < ensemble.max_batch_size:
            problems.append(
                f"{where}: max_batch_size {model.max_batch_size} is below the ensemble's "
                f"{ensemble.max_batch_size}"
            )
        batch = _batch_dims(ensemble, model)
        problems += _check_step_inputs(where, step, model, available, batch)
        outputs = {t.name: _spec(t, batch) for t in model.output}
        for produced, tensor in step.output_map.items():
            if produced not in outputs:
                problems.append(f"{where}: maps output `{produced}`, which the model does not have")
            else:
                available[tensor] = outputs[produced]
    for output in ensemble.output:
        problems += _match(f"ensemble `{name}` output", output.name, _spec(output), available)
    return problems


def _batch_dims(ensemble: ModelConfig, model: ModelConfig) -> tuple[int, ...]:
    """In an ensemble that does not batch, a step that does takes the first dim of what it is
    handed as its batch (a tokenizer's windows): its tensors are compared with that dim."""
    return (-1,) if not ensemble.max_batch_size and model.max_batch_size else ()


def _check_step_inputs(
    where: str,
    step: mc.ModelEnsembling.Step,
    model: ModelConfig,
    available: dict[str, TensorSpec],
    batch: tuple[int, ...],
) -> list[str]:
    problems: list[str] = []
    inputs = {t.name: t for t in model.input}
    for expected, tensor in step.input_map.items():
        if expected not in inputs:
            problems.append(f"{where}: maps input `{expected}`, which the model does not have")
            continue
        problems += _match(
            f"{where} input `{expected}`", tensor, _spec(inputs[expected], batch), available
        )
    for missing in sorted(set(inputs) - set(step.input_map)):
        if not inputs[missing].optional:
            problems.append(f"{where}: required input `{missing}` is not mapped")
    return problems


def _match(
    where: str, tensor: str, wanted: TensorSpec, available: dict[str, TensorSpec]
) -> list[str]:
    got = available.get(tensor)
    if got is None:
        return [f"{where}: tensor `{tensor}` is produced by no earlier step"]
    if not wanted.accepts(got):
        return [f"{where}: tensor `{tensor}` is {got.describe()}, expected {wanted.describe()}"]
    return []


def serves_a_plan(config: ModelConfig) -> bool:
    """Triton's TensorRT backend, or a generator whose decoder is a TensorRT plan."""
    runtime = config.parameters.get("runtime")
    return config.platform == "tensorrt_plan" or (
        runtime is not None and runtime.string_value == "tensorrt"
    )


def _check_plans(directory: Path, runtime: EngineRuntime) -> list[str]:
    problems = []
    for version in sorted(p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()):
        where = f"model `{directory.name}` version {version.name}"
        try:
            manifest = read_manifest(version)
        except (OSError, ValueError):
            problems.append(f"{where}: no readable manifest.json beside the plan")
            continue
        problems += plan_problems(where, manifest, runtime)
    return problems


def _spec(tensor: mc.ModelInput | mc.ModelOutput, batch: tuple[int, ...] = ()) -> TensorSpec:
    return TensorSpec(tensor.data_type, (*batch, *tensor.dims))


def _check_files(directory: Path, config: ModelConfig, hashes: bool) -> list[str]:
    versions = sorted(p for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
    problems = [
        f"model `{directory.name}` version {v.name}: {problem}"
        for v in versions
        for problem in integrity_problems(v, hashes)
    ]
    if config.platform == "ensemble":
        return problems
    if not versions:
        return [f"model `{directory.name}`: no numeric version directory"]
    kind = config.backend or config.platform
    filename = config.default_model_filename or _MODEL_FILES.get(kind)
    if filename is None:
        return problems
    missing = [
        f"model `{directory.name}` version {v.name}: `{filename}` is missing"
        for v in versions
        if not (v / filename).exists()
    ]
    return list(dict.fromkeys(missing + problems))  # a file the manifest lists too: once
