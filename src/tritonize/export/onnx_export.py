"""Export a Hugging Face checkpoint to ONNX with dynamic axes and validate it against PyTorch."""

from __future__ import annotations

import contextlib
import io
import warnings
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
from tritonize.export.validation import GOLDEN_TEXTS, compare, encode_padded, validation_cases
from tritonize.progress import note, step
from tritonize.spec import BuildSpec

# ONNX Runtime on CPU vs PyTorch fp32: measured differences are 1e-6..1e-4.
ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-3


@dataclass
class ExportedModel:
    """The ONNX graph plus everything the repository needs to serve it."""

    onnx_path: Path
    task: TaskDefinition
    output_dim: int
    tokenizer: tokenizers.Tokenizer  # padding and truncation cleared: the server sets them
    pad_token_id: int
    labels: list[str] = field(default_factory=list)  # classification: index -> label
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    # PyTorch's outputs for GOLDEN_TEXTS: what a deployment is verified against later.
    golden_outputs: np.ndarray | None = None


def export_onnx(spec: BuildSpec, workdir: Path) -> ExportedModel:
    """Load the checkpoint, export it to `workdir/model.onnx`, and validate it."""
    build = encoder_build(spec)
    definition = task_definition(spec.task)
    with step(f"Loading {spec.model_dir}"):
        config = _load_config(spec)
        _check_seq_len(spec, config)
        model, untrained = definition.load_with_untrained(spec.model_dir, spec.trust_remote_code)
        if build.needs_trained_head:
            check_trained_head(spec.model_dir, untrained, spec.allow_untrained_head)
        tokenizer, pad_id = load_tokenizer(spec.model_dir, spec.trust_remote_code)
    onnx_path = workdir / "model.onnx"
    with step(f"Exporting ONNX (opset {spec.opset}, dynamic batch and sequence axes)"):
        export_graph(model, definition.output_name, onnx_path, spec.opset)
    exported = ExportedModel(
        onnx_path=onnx_path,
        task=definition,
        output_dim=definition.output_dim(config),
        tokenizer=tokenizer,
        pad_token_id=pad_id,
        labels=build.labels(config),
    )
    with step("Validating ONNX Runtime against PyTorch"):
        exported.max_abs_diff = validate_onnx(model, exported, spec)
    ids, mask = encode_padded(tokenizer, list(GOLDEN_TEXTS), spec.max_seq_len, pad_id)
    with torch.inference_mode():
        exported.golden_outputs = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    return exported


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
    for case in cases:
        with torch.inference_mode():
            reference = model(
                torch.from_numpy(case.input_ids), torch.from_numpy(case.attention_mask)
            )
        feeds = {"input_ids": case.input_ids, "attention_mask": case.attention_mask}
        (actual,) = session.run([output], feeds)
        mismatches += compare(case.name, output, reference.numpy(), actual, ONNX_ATOL, ONNX_RTOL)
        diffs[case.name] = float(np.max(np.abs(actual - reference.numpy())))
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


def export_graph(model: torch.nn.Module, output: str, path: Path, opset: int) -> None:
    """Trace `model` to ONNX at `path` with dynamic batch and sequence axes, then check it."""
    # Example shapes > 1 so that the tracer cannot specialise a dynamic axis to 1.
    example = (torch.ones((2, 8), dtype=torch.int64), torch.ones((2, 8), dtype=torch.int64))
    axes = {"batch": 0, "sequence": 1}
    dynamic_axes = {name: {v: k for k, v in axes.items()} for name in ONNX_INPUTS}
    dynamic_axes[output] = {0: "batch"}
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
                input_names=list(ONNX_INPUTS),
                output_names=[output],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many unrelated types
        raise ExportError(f"torch.onnx.export failed: {exc}\n{chatter.getvalue()[-2000:]}") from exc
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
