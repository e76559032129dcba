"""Build a model repository from a spec: export, validate, write, check, then install.

Everything is written into a staging directory beside the output and checked there first, so a
failed build never leaves a half-written repository behind.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tritonize.triton_models as triton_models
from tritonize.engine.build import (
    ENGINE_FILES,
    EngineArtifact,
    build_decoder_engine,
    build_engine,
    require_tensorrt,
)
from tritonize.export import ExportedModel, export_onnx
from tritonize.export.decoders import ExportedDecoder, export_generation
from tritonize.export.validation import GOLDEN_TEXTS
from tritonize.progress import note, step
from tritonize.repository import configs
from tritonize.repository.checker import check_repository
from tritonize.repository.configs import ModelConfig, StepNames
from tritonize.repository.golden import generation_golden_record, golden_record, write_golden
from tritonize.repository.manifest import write_manifest
from tritonize.spec import BuildSpec, Target, Task

PACKAGE_DIR = "triton_models"  # the Python-backend sources, copied beside each model.py


@dataclass(frozen=True)
class BuildResult:
    repository: Path
    models: list[str]  # every model directory this build wrote, the ensemble first
    max_abs_diff: dict[str, float]


def build_repository(spec: BuildSpec) -> BuildResult:
    """Export `spec`'s checkpoint and install its models into `spec.output`."""
    if spec.target is Target.TENSORRT:
        require_tensorrt()  # before any work: never half a build
    spec.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=spec.output, prefix=".staging-") as tmp:
        staging = Path(tmp)
        stage = staging / "repository"
        if spec.task is Task.GENERATION:
            decoder = export_generation(spec, staging)
            engine = build_decoder_engine(spec, decoder, staging)
            with step("Writing the model repository"):
                models = write_generator(spec, decoder, engine, stage)
            diffs = decoder.max_abs_diff
        else:
            exported = export_onnx(spec, staging)
            engine = build_engine(spec, exported, staging)
            with step("Writing the model repository"):
                models = write_models(spec, exported, engine, stage)
            diffs = exported.max_abs_diff
        check_repository(stage)
        for model in models:
            _install(stage / model, spec.output / model, spec.version)
            note(f"{spec.output / model}")
    with step("Checking the whole repository"):
        check_repository(spec.output)
    return BuildResult(spec.output, models, diffs)


def write_generator(
    spec: BuildSpec, decoder: ExportedDecoder, engine: EngineArtifact, repository: Path
) -> list[str]:
    """One decoupled model named `spec.name`: tokenizer, decoding loop and decoder together."""
    config = configs.generator_config(spec, decoder.end_ids)
    directory = _write_python_model(repository, config, spec.version, "generator")
    decoder.tokenizer.save(str(directory / "tokenizer.json"))
    engine_file = directory / ENGINE_FILES[spec.target]
    shutil.copy2(engine.path, engine_file)
    files = [engine_file, directory / "tokenizer.json"]
    write_manifest(directory, spec, decoder.max_abs_diff, files, engine.manifest)
    write_golden(repository / spec.name, generation_golden_record(spec, config, decoder.golden))
    return [spec.name]


def write_models(
    spec: BuildSpec, exported: ExportedModel, engine: EngineArtifact, repository: Path
) -> list[str]:
    """Write the ensemble and its steps for `spec` into `repository`; return their names."""
    names = StepNames(spec.name)
    output, dim = exported.task.output_name, exported.output_dim
    pad = exported.pad_token_id

    tokenizer_dir = _write_python_model(
        repository, configs.tokenizer_config(spec, pad), spec.version, "tokenizer"
    )
    exported.tokenizer.save(str(tokenizer_dir / "tokenizer.json"))

    engine_config = configs.engine_config(spec, output, dim, pad)
    if spec.target is Target.LOCAL:
        engine_dir = _write_python_model(repository, engine_config, spec.version, "onnx_runner")
    else:  # served by Triton's own TensorRT or ONNX Runtime backend
        _write_config(repository, engine_config)
        engine_dir = repository / engine_config.name / str(spec.version)
        engine_dir.mkdir(parents=True)
    engine_file = engine_dir / ENGINE_FILES[spec.target]
    shutil.copy2(engine.path, engine_file)
    files = [engine_file, tokenizer_dir / "tokenizer.json"]
    write_manifest(engine_dir, spec, exported.max_abs_diff, files, engine.manifest)

    written = [names.ensemble, names.tokenizer, names.engine]
    if spec.task is Task.CLASSIFICATION:
        config = configs.postprocess_config(spec, exported.labels)
        _write_python_model(repository, config, spec.version, "classifier")
        written.append(names.postprocess)

    ensemble = configs.ensemble_config(spec, output, dim)
    _write_config(repository, ensemble)
    record = golden_record(spec, exported, ensemble, list(GOLDEN_TEXTS))
    write_golden(repository / spec.name, record)
    (repository / spec.name / str(spec.version)).mkdir(parents=True, exist_ok=True)
    return written


def _write_python_model(repository: Path, config: ModelConfig, version: int, module: str) -> Path:
    """config.pbtxt plus `<version>/model.py` re-exporting `triton_models.<module>`."""
    _write_config(repository, config)
    version_dir = repository / config.name / str(version)
    version_dir.mkdir(parents=True)
    shutil.copytree(
        Path(triton_models.__file__).parent,
        version_dir / PACKAGE_DIR,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (version_dir / "model.py").write_text(
        f'"""Triton entry point: the model lives in {PACKAGE_DIR}/{module}.py."""\n\n'
        f"from {PACKAGE_DIR}.{module} import TritonPythonModel\n\n"
        '__all__ = ["TritonPythonModel"]\n'
    )
    return version_dir


def _write_config(repository: Path, config: ModelConfig) -> None:
    directory = repository / config.name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.pbtxt").write_text(configs.to_text(config))


def _install(staged: Path, target: Path, version: int) -> None:
    """Replace `target`'s files and this version; other versions stay (for rollback)."""
    target.mkdir(parents=True, exist_ok=True)
    version_dir = target / str(version)
    if version_dir.exists():
        shutil.rmtree(version_dir)
    shutil.move(staged / str(version), version_dir)
    for item in staged.iterdir():  # config.pbtxt, golden.json
        if item.is_file():
            shutil.copy2(item, target / item.name)
