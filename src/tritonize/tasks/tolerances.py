"""How close a deployment's outputs must be to their reference, by the engine's precision.

One table for every comparison. Two references are used: the build gate holds an engine
against the fp32 ONNX graph (same graph, so fp32 must agree to `gate_min_cosine`), and the
golden check holds a served model against PyTorch (export drift included: `min_cosine`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonize.spec import Precision


@dataclass(frozen=True)
class Tolerance:
    min_cosine: float  # embeddings, per row, served against PyTorch
    gate_min_cosine: float  # embeddings, per row, an engine against the fp32 ONNX graph
    max_probability_diff: float  # classifiers, with identical labels
    min_common_prefix: float  # generation: share of a greedy continuation (1.0: identical)


TOLERANCES = {
    Precision.FP32: Tolerance(
        min_cosine=0.9999, gate_min_cosine=0.99999, max_probability_diff=1e-3,
        min_common_prefix=1.0,
    ),
    # fp16/bf16 greedy decoding may part ways at a near tie: a shared start will do.
    Precision.FP16: Tolerance(
        min_cosine=0.999, gate_min_cosine=0.999, max_probability_diff=1e-2,
        min_common_prefix=0.5,
    ),
    Precision.BF16: Tolerance(
        min_cosine=0.999, gate_min_cosine=0.999, max_probability_diff=1e-2,
        min_common_prefix=0.5,
    ),
    # int8 (ONNX Runtime, CPU): its build gate is task-level (engine/quantize.py: mean cosine,
    # nearest neighbours, label agreement on 1200 texts); single rows move further (MiniLM:
    # worst of 1200 about 0.95). Generation is not built in int8.
    Precision.INT8: Tolerance(
        min_cosine=0.94, gate_min_cosine=0.94, max_probability_diff=2e-2,
        min_common_prefix=0.5,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class GateTolerance:
    """The build gate's columns of the table: its reference is the fp32 ONNX graph."""

    min_cosine: float  # embeddings, per row
    max_probability_diff: float  # classifiers, with identical labels


GATE_TOLERANCES = {
    precision: GateTolerance(limits.gate_min_cosine, limits.max_probability_diff)
    for precision, limits in TOLERANCES.items()
}
