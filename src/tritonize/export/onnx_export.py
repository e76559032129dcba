"""Export a Hugging Face checkpoint to ONNX with dynamic axes and validate it against PyTorch."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import torch

from tritonize.errors import ExportError, SpecError, ValidationError
from tritonize.export.architectures import architecture_for
from tritonize.export.tasks import (
    ONNX_INPUTS,
    TaskDefinition,
    check_trained_head,
    encoder_build,
    task_definition,
)
from tritonize.export.validation import compare, validation_cases
from tritonize.monitor.profile import build_profile
from tritonize.progress import note, step
from tritonize.spec import BuildSpec
from tritonize.tasks.build import Reference
from tritonize.triton_models.features import Profile

# ONNX Runtime on CPU vs PyTorch fp32: measured differences are 1e-6..1e-4.
ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-3


@dataclass
class ExportedModel:
    """The ONNX graph plus everything the repository needs to serve it."""

    onnx_path: Path
    task: TaskDefinition
    output_dims: tuple[int, ...]  # without the batch dimension; -1: the sequence
    tokenizer: tokenizers.Tokenizer  # padding and truncation cleared: the server sets them
    pad_token_id: int
    labels: list[str] = field(default_factory=list)  # classification: index -> label
    graph_inputs: tuple[str, ...] = ONNX_INPUTS
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    # The golden inputs and PyTorch's outputs for them: what a deployment is verified against.
    golden: dict[str, Any] = field(default_factory=dict)
    # The reference traffic's features: what drift is measured against (None: not profiled).
    profile: Profile | None = None

    @property
    def output_dim(self) -> int:
        """The output's width (its last dim)."""
        return self.output_dims[-1]


def export_onnx(spec: BuildSpec, workdir: Path) -> ExportedModel:
    """Load the checkpoint, export it to `workdir/model.onnx`, and validate it."""
    build = encoder_build(spec)
    definition = task_definition(spec.task)
    with step(f"Loading {spec.model_dir}"):
        config = _load_config(spec)
        _check_seq_len(spec, config)
        model, untrained = definition.load_with_untrained(spec.model_dir, spec.trust_remote_code)
        if build.needs_trained_head:
            check_trained_head(
                spec.model_dir, untrained, spec.allow_untrained_head, spec.task.value
            )
        tokenizer, pad_id = load_tokenizer(spec.model_dir, spec.trust_remote_code)
    onnx_path = workdir / "model.onnx"
    graph_inputs = definition.graph_inputs(config)
    dims = definition.output_dims(config)
    with step(f"Exporting ONNX (opset {spec.opset}, dynamic batch and sequence axes)"):
        export_graph(model, definition.output_name, onnx_path, spec.opset, graph_inputs, dims)
    exported = ExportedModel(
        onnx_path=onnx_path,
        task=definition,
        output_dims=dims,
        tokenizer=tokenizer,
        pad_token_id=pad_id,
        labels=build.labels(config),
        graph_inputs=graph_inputs,
    )
    with step("Validating ONNX Runtime against PyTorch"):
        exported.max_abs_diff = validate_onnx(model, exported, spec)
    reference = Reference(
        _torch_runner(model, graph_inputs), tokenizer, pad_id, exported.labels, graph_inputs
    )
    exported.golden = build.golden_reference(reference, spec)
    if build.profiled:
        exported.profile = build_profile(spec, reference, build)
    return exported


def _torch_runner(
    model: torch.nn.Module, graph_inputs: tuple[str, ...]
) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The PyTorch model as a function of the graph's feeds."""

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model(*(torch.from_numpy(feeds[name]) for name in graph_inputs)).numpy()

    return run


def load_tokenizer(model_dir: Path, trust_remote_code: bool) -> tuple[tokenizers.Tokenizer, int]:
    """The checkpoint's fast tokenizer (Rust `tokenizers`) and its padding id."""
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(
            model_dir, use_fast=True, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load a tokenizer from `{model_dir}`: {exc}") from exc
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"`{model_dir}` has no fast tokenizer (tokenizer.json) to serve")
    tokenizer = tokenizers.Tokenizer.from_str(backend.to_str())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    pad_id = hf.pad_token_id if hf.pad_token_id is not None else 0
    return tokenizer, int(pad_id)


def validate_onnx(
    model: torch.nn.Module, exported: ExportedModel, spec: BuildSpec
) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime on every validation case; raise on any miss."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    output = exported.task.output_name
    mismatches: list[str] = []
    diffs: dict[str, float] = {}
    cases = validation_cases(
        exported.tokenizer, spec.max_batch_size, spec.max_seq_len, exported.pad_token_id
    )
    run_torch = _torch_runner(model, exported.graph_inputs)
    for case in cases:
        feeds = case.feeds(exported.graph_inputs)
        reference = run_torch(feeds)
        (actual,) = session.run([output], feeds)
        mismatches += compare(case.name, output, reference, actual, ONNX_ATOL, ONNX_RTOL)
        diffs[case.name] = float(np.max(np.abs(actual - reference)))
        note(f"{case.name} {tuple(case.input_ids.shape)}: max abs diff {diffs[case.name]:.2e}")
    if mismatches:
        raise ValidationError(
            f"ONNX export of `{spec.model_dir}` does not match PyTorch", mismatches
        )
    return diffs


def _load_config(spec: BuildSpec) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            spec.model_dir, local_files_only=True, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ExportError(
            f"cannot read a transformers config in `{spec.model_dir}`: {exc}"
        ) from exc


def _check_seq_len(spec: BuildSpec, config: Any) -> None:
    limit = architecture_for(config).max_positions(config)
    if spec.max_seq_len > limit:
        raise SpecError(
            f"`max_seq_len` = {spec.max_seq_len} is not allowed: "
            f"`{config.model_type}` at `{spec.model_dir}` takes at most {limit} positions"
        )


def export_graph(
    model: torch.nn.Module,
    output: str,
    path: Path,
    opset: int,
    inputs: tuple[str, ...] = ONNX_INPUTS,
    output_dims: tuple[int, ...] = (1,),
) -> None:
    """Trace `model` to ONNX at `path` with dynamic batch and sequence axes, then check it
    (`output_dims` with -1: the output has the sequence axis too)."""
    # Example shapes > 1 so that the tracer cannot specialise a dynamic axis to 1.
    example = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in inputs)
    axes = {"batch": 0, "sequence": 1}
    dynamic_axes = {name: {v: k for k, v in axes.items()} for name in inputs}
    dynamic_axes[output] = {0: "batch"}
    if -1 in output_dims:
        dynamic_axes[output][1 + output_dims.index(-1)] = "sequence"
    # The TorchScript exporter is fast and handles `dynamic_axes`. Its tracer warnings are
    # silenced: validation at several shapes is what proves the graph general.
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stderr(chatter), warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                example,
                str(path),
                input_names=list(inputs),
                output_names=[output],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many unrelated types
        raise ExportError(f"torch.onnx.export failed: {exc}\n{chatter.getvalue()[-2000:]}") from exc
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
