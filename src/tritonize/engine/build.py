"""The engine step of a build: the fp32 ONNX graph, or a TensorRT plan that passed its gate."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonize.engine.accuracy import Runner, cases_at_profile, decoder_gate, gate
from tritonize.engine.compat import compute_capabilities, python_tensorrt_version
from tritonize.engine.profiles import DecoderProfiles, ShapeProfile
from tritonize.errors import EngineError
from tritonize.export import ExportedModel
from tritonize.export.decoders import ExportedDecoder
from tritonize.export.validation import validation_cases
from tritonize.progress import note, step
from tritonize.spec import BuildSpec, Precision, Target
from tritonize.triton_models.decoding import OnnxDecoderRuntime
from tritonize.triton_models.generation import usable_window
from tritonize.triton_models.onnx_runner import OnnxEncoder

ENGINE_FILES = {
    Target.LOCAL: "model.onnx",
    Target.ONNXRUNTIME: "model.onnx",
    Target.TENSORRT: "model.plan",
}


@dataclass(frozen=True)
class EngineArtifact:
    """The file the engine step serves, and what the manifest should say about it."""

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)


def require_tensorrt() -> None:
    """Stop before any work when this machine cannot build a TensorRT plan."""
    missing = []
    if python_tensorrt_version() is None:
        missing.append("the `tensorrt` Python package")
    if not compute_capabilities():
        missing.append("an NVIDIA GPU (nvidia-smi lists none)")
    if missing:
        raise EngineError(
            f"`target` = 'tensorrt' needs {' and '.join(missing)}, which this machine lacks. "
            "Build the plan on a GPU host with the TensorRT of the Triton image that will serve "
            "it: `docker compose run --rm build tritonize build --target tensorrt ...` "
            "(see README, 'GPU workflow'). Nothing was written."
        )


def build_engine(spec: BuildSpec, exported: ExportedModel, workdir: Path) -> EngineArtifact:
    """`model.onnx` for `local` and `onnxruntime` (int8: quantized and gated); a gated
    `model.plan` for `tensorrt`."""
    if spec.precision is Precision.INT8:
        return _int8_graph(spec, exported, workdir)
    if spec.target is not Target.TENSORRT:
        return EngineArtifact(exported.onnx_path)
    profile = ShapeProfile.from_spec(spec)
    reference = _onnx_runner(exported)
    source = exported.onnx_path
    if spec.precision is not Precision.FP32:
        source = _typed_graph(spec, exported, workdir, reference)

    from tritonize.engine.tensorrt import PlanRunner, build_plan

    shapes = ", ".join(f"{k} {b}x{s}" for k, (b, s) in profile.named().items())
    with step(f"Building the TensorRT plan ({spec.precision.value}; {shapes})"):
        profiles = [profile.tensors(exported.graph_inputs)]
        plan = build_plan(source, workdir / "model.plan", spec, profiles)
    with step("Accuracy gate: TensorRT against ONNX Runtime at the profile's min, opt, max"):
        cases = cases_at_profile(exported.tokenizer, profile, exported.pad_token_id)
        figures = gate(
            "TensorRT plan", PlanRunner(plan.plan).run, reference, cases, spec.task,
            spec.precision, exported.graph_inputs,
        )  # fmt: skip
    manifest = _tensorrt_manifest(spec, profile.to_dict(), plan.seconds, figures)
    return EngineArtifact(plan.plan, manifest)


def build_decoder_engine(
    spec: BuildSpec, decoder: ExportedDecoder, workdir: Path
) -> EngineArtifact:
    """`model.onnx` for `local`; for `tensorrt`, a decoder plan with a prefill and a decode
    profile that passed its gate against the fp32 graph on ONNX Runtime."""
    if spec.target is not Target.TENSORRT:
        return EngineArtifact(decoder.onnx_path)
    from tritonize.engine.tensorrt import build_plan
    from tritonize.triton_models.tensorrt_decoder import TensorRTDecoderRuntime

    profiles = DecoderProfiles.from_spec(spec, decoder.layers, decoder.kv_heads, decoder.head_dim)
    reference = OnnxDecoderRuntime(decoder.onnx_path)
    source = decoder.onnx_path
    if spec.precision is not Precision.FP32:
        source = _typed_decoder_graph(spec, workdir, reference, profiles)
    window = usable_window(spec.max_seq_len)
    shapes = f"up to {spec.max_batch_size} sequences per step, prompts up to {window} tokens"
    with step(f"Building the TensorRT decoder plan ({spec.precision.value}; {shapes})"):
        plan = build_plan(source, workdir / "model.plan", spec, profiles.all())
    with step("Accuracy gate: TensorRT against ONNX Runtime, prefill and batched decode steps"):
        candidate = TensorRTDecoderRuntime(plan.plan)
        figures = decoder_gate(
            "TensorRT decoder plan", candidate, reference, profiles, reference.vocab,
            spec.precision,
        )  # fmt: skip
    manifest = _tensorrt_manifest(spec, profiles.to_dict(), plan.seconds, figures)
    return EngineArtifact(plan.plan, manifest)


def _typed_decoder_graph(
    spec: BuildSpec, workdir: Path, reference: OnnxDecoderRuntime, profiles: DecoderProfiles
) -> Path:
    from tritonize.engine.precision import export_typed_decoder

    name = spec.precision.value
    path = workdir / f"model.{name}.onnx"
    with step(f"Exporting the {name} decoder (norms, softmax and logits stay fp32)"):
        typed = export_typed_decoder(spec, path)
    with step(f"Checking the {name} decoder against fp32"):
        decoder_gate(f"{name} decoder", typed, reference, profiles, reference.vocab, spec.precision)
    return path


def _typed_graph(
    spec: BuildSpec, exported: ExportedModel, workdir: Path, reference: Runner
) -> Path:
    from tritonize.engine.precision import export_typed_graph

    name = spec.precision.value
    with step(f"Exporting the {name} graph (norms, softmax, pooling and logits stay fp32)"):
        path, typed = export_typed_graph(
            spec, exported.task, workdir, exported.graph_inputs, exported.output_dims
        )
    with step(f"Checking the {name} graph against fp32"):
        cases = validation_cases(
            exported.tokenizer, spec.max_batch_size, spec.max_seq_len, exported.pad_token_id
        )
        gate(
            f"{name} graph", typed, reference, cases, spec.task, spec.precision,
            exported.graph_inputs,
        )  # fmt: skip
    return path


def _int8_graph(spec: BuildSpec, exported: ExportedModel, workdir: Path) -> EngineArtifact:
    """The fastest int8 graph that keeps the task's answers (engine/quantize.py)."""
    from tritonize.engine.quantize import build_int8

    result = build_int8(
        exported.onnx_path, workdir, spec.task, exported.tokenizer, exported.pad_token_id,
        spec.max_seq_len, exported.graph_inputs,
    )  # fmt: skip
    kept = ", ".join(result.excluded) or "none"
    note(f"INT8 {result.mode}: {result.speedup:.2f}x fp32's speed, MatMuls left in fp32: {kept}")
    return EngineArtifact(result.path, result.manifest())


def _onnx_runner(exported: ExportedModel) -> Runner:
    encoder = OnnxEncoder(exported.onnx_path, exported.task.output_name, exported.pad_token_id)
    return lambda feeds: encoder.run([feeds])[0]


def _tensorrt_manifest(
    spec: BuildSpec, profile: dict[str, Any], seconds: float, figures: dict[str, float]
) -> dict[str, Any]:
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {
        "tensorrt": {
            "version": python_tensorrt_version(),
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0),
            "compute_capability": f"{major}.{minor}",
            "precision": spec.precision.value,
            "profile": profile,
            "hardware_compatibility": spec.hardware_compatibility.value,
            "version_compatible": spec.version_compatible,
            "build_seconds": round(seconds, 1),
        },
        "accuracy_gate": figures,
    }
