"""Shapes an engine is built for, and the padding that lets requests share them."""

from __future__ import annotations

from dataclasses import dataclass

from tritonize.spec import BuildSpec

Shape = tuple[int, int]  # (batch, sequence)


@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimisation profile for `input_ids` and `attention_mask`."""

    min: Shape
    opt: Shape
    max: Shape

    @classmethod
    def from_spec(cls, spec: BuildSpec) -> ShapeProfile:
        opt_batch = spec.opt_batch_size or max(1, spec.max_batch_size // 2)
        opt_seq = spec.opt_seq_len or min(128, spec.max_seq_len)
        return cls(
            min=(1, 1), opt=(opt_batch, opt_seq), max=(spec.max_batch_size, spec.max_seq_len)
        )

    def named(self) -> dict[str, Shape]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    def to_dict(self) -> dict[str, list[int]]:
        return {name: list(shape) for name, shape in self.named().items()}


def padding_buckets(max_seq_len: int, smallest: int = 16) -> tuple[int, ...]:
    """Sequence lengths the tokenizer pads to for fixed-shape engines: 16, 32, ... max_seq_len.

    Triton's dynamic batcher only merges requests of equal shape into a TensorRT or ONNX
    Runtime model, so requests are padded up to the next bucket: few shapes, little waste.
    """
    buckets = []
    size = smallest
    while size < max_seq_len:
        buckets.append(size)
        size *= 2
    return (*buckets, max_seq_len)
