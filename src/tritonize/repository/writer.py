"""Build a model repository from a spec: export, validate, write, check, then install.

Everything is written into a staging directory beside the output and checked there first, then
installed by journalled renames (`install.py`), so a failed or killed build never leaves a
half-written repository behind.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tritonize.engine.build import (
    ENGINE_FILES,
    EngineArtifact,
    build_decoder_engine,
    build_engine,
    require_tensorrt,
)
from tritonize.export import ExportedModel, export_onnx
from tritonize.export.decoders import ExportedDecoder, export_generation
from tritonize.monitor.profile import read_reference_texts, write_profile
from tritonize.progress import note, step
from tritonize.repository import configs
from tritonize.repository.builds import HISTORY, point, serving
from tritonize.repository.checker import check_repository
from tritonize.repository.configs import ModelConfig
from tritonize.repository.golden import generation_golden_record, golden_record, write_golden
from tritonize.repository.install import install, pause_point, staging_directory
from tritonize.repository.manifest import seal, write_manifest
from tritonize.repository.ownership import planned_models, refuse_conflicts
from tritonize.repository.sources import write_python_sources
from tritonize.spec import BuildSpec, Target
from tritonize.tasks import task_named
from tritonize.tasks.build import Layout


@dataclass(frozen=True)
class BuildResult:
    repository: Path
    models: list[str]  # every model directory this build wrote, the ensemble first
    max_abs_diff: dict[str, float]


def build_repository(spec: BuildSpec) -> BuildResult:
    """Export `spec`'s checkpoint and install its models into `spec.output`."""
    if spec.target is Target.TENSORRT:
        require_tensorrt()  # before any work: never half a build
    read_reference_texts(spec.reference_texts, warn=False)  # refused now, not after the export
    with staging_directory(spec.output) as staging:
        refuse_conflicts(spec, planned_models(spec))  # before any work, after any roll-back
        pause_point("staging")
        models, diffs = _stage(spec, staging)
        pause_point("staged")
        with step("Installing and checking the whole repository"):
            install(
                staging,
                spec.output,
                models,
                guard=lambda: refuse_conflicts(spec, models),
                check=lambda repository: check_repository(repository, recover=False),
            )
            for model in models:
                note(f"{spec.output / model}")
    return BuildResult(spec.output, models, diffs)


def _stage(spec: BuildSpec, staging: Path) -> tuple[list[str], dict[str, float]]:
    """Export, validate and write every model into `staging/repository`, sealed and checked."""
    stage = staging / "repository"
    recipe = _RECIPES[task_named(spec.task.value).build.layout]
    models, diffs = recipe(spec, staging, stage)
    for model in models:
        seal(stage / model / str(spec.version), owner=spec.name)
    if _points_here(spec):
        if (kept := spec.output / spec.name / HISTORY).exists():  # an overwrite keeps it
            (stage / spec.name).mkdir()
            shutil.copy2(kept, stage / spec.name / HISTORY)
        point(stage, spec.name, spec.version)
        models.append(spec.name)
    check_repository(stage, recover=False)
    return models, diffs


def _points_here(spec: BuildSpec) -> bool:
    """Whether the public model is (re)pointed at this build: where there is none yet, or it
    serves the version being overwritten. Otherwise the build waits beside it for a rollout."""
    if not (spec.output / spec.name).exists():
        return True
    current = serving(spec.output, spec.name)
    return current is not None and current.version == spec.version


def _stage_ensemble(
    spec: BuildSpec, workdir: Path, repository: Path
) -> tuple[list[str], dict[str, float]]:
    """Layout.ENSEMBLE: export the encoder, build its engine, write the ensemble's models."""
    exported = export_onnx(spec, workdir)
    engine = build_engine(spec, exported, workdir)
    with step("Writing the model repository"):
        models = write_models(spec, exported, engine, repository)
    return models, exported.max_abs_diff


def _stage_generator(
    spec: BuildSpec, workdir: Path, repository: Path
) -> tuple[list[str], dict[str, float]]:
    """Layout.GENERATOR: export the decoder, build its engine, write the one generator."""
    decoder = export_generation(spec, workdir)
    engine = build_decoder_engine(spec, decoder, workdir)
    with step("Writing the model repository"):
        models = write_generator(spec, decoder, engine, repository)
    return models, decoder.max_abs_diff


_RECIPES = {Layout.ENSEMBLE: _stage_ensemble, Layout.GENERATOR: _stage_generator}


def write_generator(
    spec: BuildSpec, decoder: ExportedDecoder, engine: EngineArtifact, repository: Path
) -> list[str]:
    """One decoupled model, the build's entry: tokenizer, decoding loop and decoder together."""
    config = configs.generator_config(spec, decoder.end_ids, decoder.chat_template)
    directory = _write_python_model(repository, config, spec.version, "generator")
    decoder.tokenizer.save(str(directory / "tokenizer.json"))
    engine_file = directory / ENGINE_FILES[spec.target]
    shutil.copy2(engine.path, engine_file)
    files = [engine_file, directory / "tokenizer.json"]
    if decoder.profile is not None:  # read by the generator, which exports live features
        write_profile(directory, decoder.profile)
    write_manifest(directory, spec, decoder.max_abs_diff, files, engine.manifest)
    write_golden(repository / config.name, generation_golden_record(spec, config, decoder.golden))
    return [config.name]


def write_models(
    spec: BuildSpec, exported: ExportedModel, engine: EngineArtifact, repository: Path
) -> list[str]:
    """Write the ensemble and its steps for `spec` into `repository`; return their names."""
    build = configs.encoder_build(spec)
    output, graph_inputs = exported.task.output_name, exported.graph_inputs
    pad = exported.pad_token_id

    tokenizer = configs.tokenizer_config(spec, pad, graph_inputs)
    tokenizer_dir = _write_python_model(repository, tokenizer, spec.version, build.tokenizer_module)
    exported.tokenizer.save(str(tokenizer_dir / "tokenizer.json"))

    engine_config = configs.engine_config(spec, output, exported.output_dims, pad, graph_inputs)
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

    written = [tokenizer.name, engine_config.name]
    postprocess = build.postprocess(exported.labels, spec)
    if postprocess is not None:  # the task's Python step after the engine
        config = configs.postprocess_config(spec, exported.labels)
        assert config is not None
        _write_python_model(repository, config, spec.version, postprocess.module)
        written.append(config.name)

    ensemble = configs.ensemble_config(
        spec, output, exported.output_dim, exported.labels, graph_inputs
    )
    _write_config(repository, ensemble)
    write_golden(repository / ensemble.name, golden_record(spec, exported, ensemble))
    (repository / ensemble.name / str(spec.version)).mkdir(parents=True, exist_ok=True)
    if exported.profile is not None:  # read by the steps, which export live features
        write_profile(repository / ensemble.name / str(spec.version), exported.profile)
    return [ensemble.name, *written]


def _write_python_model(repository: Path, config: ModelConfig, version: int, module: str) -> Path:
    """config.pbtxt plus `<version>/model.py` re-exporting `triton_models.<module>`."""
    _write_config(repository, config)
    version_dir = repository / config.name / str(version)
    write_python_sources(version_dir, module)
    return version_dir


def _write_config(repository: Path, config: ModelConfig) -> None:
    directory = repository / config.name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.pbtxt").write_text(configs.to_text(config))
