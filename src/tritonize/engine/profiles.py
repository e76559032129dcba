"""Shapes an engine is built for, and the padding that lets requests share them."""

from __future__ import annotations

from dataclasses import dataclass

from tritonize.spec import BuildSpec
from tritonize.triton_models.common import ATTENTION_MASK, INPUT_IDS
from tritonize.triton_models.decoding import past_names
from tritonize.triton_models.generation import usable_window

Shape = tuple[int, int]  # (batch, sequence)
Dims = tuple[int, ...]
TensorProfile = dict[str, tuple[Dims, Dims, Dims]]  # input name -> (min, opt, max)


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

    def tensors(self, names: tuple[str, ...] = (INPUT_IDS, ATTENTION_MASK)) -> TensorProfile:
        """The same shapes for every input of an encoder (ids, mask, and any token types)."""
        return {name: (self.min, self.opt, self.max) for name in names}


@dataclass(frozen=True)
class DecoderProfiles:
    """The two profiles of a decoder plan: 0 prefills up to `max_batch` prompts (behind one
    masked cache slot), 1 decodes one token for up to `max_batch` sequences whose caches are up to
    `context_window - 1` long.

    Separate profiles let each be tuned for its own shapes (long prompts; wide batches of
    single tokens); the runtime keeps one execution context per profile.
    """

    max_batch: int
    context_window: int
    layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_spec(
        cls, spec: BuildSpec, layers: int, kv_heads: int, head_dim: int
    ) -> DecoderProfiles:
        return cls(spec.max_batch_size, spec.max_seq_len, layers, kv_heads, head_dim)

    def prefill(self) -> TensorProfile:
        window = usable_window(self.context_window)
        opt = min(128, window)
        batch = (1, 1, self.max_batch)  # the past is one masked slot (DecoderSession.prefill)
        return self._tensors(batch=batch, sequence=(1, opt, window), past=(1, 1, 1))

    def decode(self) -> TensorProfile:
        window = usable_window(self.context_window)
        batch = (1, max(1, self.max_batch // 2), self.max_batch)
        return self._tensors(batch=batch, sequence=(1, 1, 1), past=(1, max(1, window // 2), window))

    def all(self) -> list[TensorProfile]:
        return [self.prefill(), self.decode()]

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        """For the manifest: (batch, prompt length) to prefill, (batch, cache length) to decode."""
        prefill = self.prefill()[INPUT_IDS]
        decode = self.decode()[past_names(self.layers)[0]]
        return {
            "prefill": dict(zip(("min", "opt", "max"), map(list, prefill), strict=True)),
            "decode": {k: [d[0], d[2]] for k, d in zip(("min", "opt", "max"), decode, strict=True)},
        }

    def _tensors(self, batch: Dims, sequence: Dims, past: Dims) -> TensorProfile:
        """Every input's (min, opt, max) from the batch, new-token and past ranges."""

        def at(i: int) -> dict[str, Dims]:
            cache = (batch[i], self.kv_heads, past[i], self.head_dim)
            return {
                INPUT_IDS: (batch[i], sequence[i]),
                ATTENTION_MASK: (batch[i], past[i] + sequence[i]),
                "position_ids": (batch[i], sequence[i]),
                **{name: cache for name in past_names(self.layers)},
            }

        low, opt, high = at(0), at(1), at(2)
        return {name: (low[name], opt[name], high[name]) for name in low}


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
