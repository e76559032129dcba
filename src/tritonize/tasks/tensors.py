"""The tensors a task names: its public interface, and those between its steps."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublicTensor:
    """A tensor of a task's interface: Triton's datatype, numpy's dtype, dims without the batch
    dimension, and the value a server assumes when an optional one is not sent."""

    name: str
    datatype: str  # as Triton's protocol names it: BYTES, FP32, INT32, ...
    dtype: type
    dims: tuple[int, ...] = (1,)
    optional: bool = False
    default: object = None
