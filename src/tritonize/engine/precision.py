"""Reduced-precision (fp16 / bf16) graphs for strongly typed TensorRT networks.

TensorRT 10.12 deprecated the weak-typing builder flags (FP16, BF16) and TensorRT 11 removes
them: a strongly typed network runs every tensor in the dtype the ONNX graph gives it. So the
precision is decided here, in PyTorch, before export: weights and matmuls in fp16/bf16, while
the numerically fragile parts stay in fp32: layer normalisation (fp16 overflow), the attention
softmax (and the additive mask, whose large negative values are not safe in fp16), pooling,
L2 normalisation and the logits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from tritonize.export.decoders import TorchDecoderRuntime, export_decoder, load_decoder
from tritonize.export.onnx_export import export_graph
from tritonize.export.tasks import TaskDefinition
from tritonize.progress import note
from tritonize.spec import BuildSpec, Precision

Module = TypeVar("Module", bound=nn.Module)
DTYPES = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}
ATTENTION = "tritonize_fp32_softmax"


class Fp32LayerNorm(nn.Module):
    """LayerNorm computed in fp32 with fp32 parameters; returns the input's dtype."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.norm = copy.deepcopy(norm).float()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden.float()).to(hidden.dtype)


def fp32_softmax_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with scores, mask and softmax in fp32 (a transformers attention function)."""
    scale = query.size(-1) ** -0.5 if scaling is None else scaling
    groups = getattr(module, "num_key_value_groups", 1)  # grouped-query attention
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)).float() * scale
    if attention_mask is not None:
        scores = scores + attention_mask.float()
    weights = nn.functional.softmax(scores, dim=-1).to(value.dtype)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def register_attention() -> None:
    """Make `attn_implementation="tritonize_fp32_softmax"` loadable by transformers.

    It takes the eager (additive float) mask, which the function adds in fp32.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION, fp32_softmax_attention)
    AttentionMaskInterface.register(ATTENTION, eager_mask)


def to_precision(model: Module, precision: Precision) -> Module:
    """A copy of `model` in `precision`, with every LayerNorm kept in fp32."""
    if precision is Precision.FP32:
        return model
    typed = copy.deepcopy(model).to(DTYPES[precision])
    for parent in list(typed.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, Fp32LayerNorm(child))
    return typed.eval()


def export_typed_graph(
    spec: BuildSpec,
    task: TaskDefinition,
    workdir: Path,
    graph_inputs: tuple[str, ...],
    output_dims: tuple[int, ...],
) -> tuple[Path, Callable[[dict[str, np.ndarray]], np.ndarray]]:
    """Export `spec`'s model in `spec.precision`; return the graph and a PyTorch runner of it.

    The runner lets the typed model be checked on any machine: ONNX Runtime on CPU has no
    kernels for many bf16 operators.
    """
    register_attention()
    try:
        model = task.load(spec.model_dir, spec.trust_remote_code, attn_implementation=ATTENTION)
    except (ValueError, TypeError, KeyError):
        note(
            f"this architecture keeps its own attention: its softmax runs in {spec.precision.value}"
        )
        model = task.load(spec.model_dir, spec.trust_remote_code)
    typed = to_precision(model, spec.precision)
    path = workdir / f"model.{spec.precision.value}.onnx"
    export_graph(typed, task.output_name, path, spec.opset, graph_inputs, output_dims)

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return typed(*(torch.from_numpy(feeds[name]) for name in graph_inputs)).numpy()

    return path, run


def export_typed_decoder(spec: BuildSpec, path: Path) -> TorchDecoderRuntime:
    """Export `spec`'s decoder in `spec.precision` (KV cache too) to `path`; return a PyTorch
    runtime of the typed model, to check it on any machine."""
    register_attention()
    wrapper, config = load_decoder(spec.model_dir, spec.trust_remote_code, ATTENTION)
    typed = to_precision(wrapper, spec.precision)
    dtype = DTYPES[spec.precision]
    export_decoder(typed, config, path, spec.opset, cache_dtype=dtype)
    return TorchDecoderRuntime(typed, config, dtype)
