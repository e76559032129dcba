"""The decoder graph behind one interface, with the running batch's KV cache kept in the runtime.

A `DecoderRuntime` runs the exported graph once (ONNX Runtime on CPU here; a TensorRT plan on
the GPU in `tensorrt_decoder.py`) and owns where its arrays live. `DecoderSession` keeps the
running batch's cache as that runtime's arrays: between steps the presents of one step are bound
as the pasts of the next, untouched. Only when the batch changes (a sequence joins or leaves) is
the cache re-packed, left-padded to the longest sequence with the padding masked out.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

Array = Any  # the runtime's array type: numpy on CPU, torch CUDA tensors under TensorRT
_NUMPY_TYPES: dict[str, type] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def present_names(layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def count_layers(input_names: Iterable[str]) -> int:
    """A decoder graph's layers: its past comes as a key and a value per layer."""
    return sum(name.startswith("past_key_values.") for name in input_names) // 2


class DecoderRuntime(Protocol):
    """One call of the decoder graph; caches stay in the runtime's memory."""

    layers: int
    kv_heads: int
    head_dim: int
    vocab: int  # the logits' width: every token id the decoder can produce

    def zeros(self, shape: tuple[int, ...]) -> Array: ...

    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[Array],
    ) -> tuple[np.ndarray, list[Array]]:
        """Last position's logits (on the host) and the presents (in the runtime)."""
        ...


class OnnxDecoderRuntime:
    """ONNX Runtime with I/O binding: outputs are written into arrays allocated here, which the
    next step binds as its inputs, so a cache is never copied between steps."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.layers = count_layers(inputs)
        self.past_names, self.present_names = past_names(self.layers), present_names(self.layers)
        past = inputs[self.past_names[0]]
        self.kv_heads, self.head_dim = (int(d) for d in past.shape[1::2])
        self.cache_dtype = _NUMPY_TYPES[past.type]  # fp32, or fp16 for a typed graph
        self.vocab = int(self.session.get_outputs()[0].shape[1])

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, dtype=self.cache_dtype)

    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[np.ndarray],
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        binding = self.session.io_binding()
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "position_ids": position_ids}  # fmt: skip
        feeds.update(zip(self.past_names, past, strict=True))
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        batch, total = attention_mask.shape
        logits = np.empty((batch, self.vocab), dtype=np.float32)
        presents: list[np.ndarray] = [
            np.empty((batch, self.kv_heads, total, self.head_dim), dtype=self.cache_dtype)
            for _ in self.present_names
        ]
        for name, array in zip(["logits", *self.present_names], [logits, *presents], strict=True):
            shape = list(array.shape)
            binding.bind_output(name, "cpu", 0, array.dtype.type, shape, array.ctypes.data)
        self.session.run_with_iobinding(binding)
        return logits, presents


class DecoderSession:
    """Prefill prompts, or decode one token for each sequence of the running batch.

    Sequences are named by any hashable key. `decode(keys, ...)` takes the batch as it should be
    now: sequences absent since the last step have left, prefilled ones join.
    """

    def __init__(self, runtime: DecoderRuntime) -> None:
        self.runtime = runtime
        self.rows: list[Hashable] = []  # the batch the cache is arranged for
        self.lengths: list[int] = []  # real (unpadded) cache length of each row
        self.past: list[Array] = []
        # prefilled, not yet decoding: the prefill's presents, the row in them, the length
        self.joining: dict[Hashable, tuple[list[Array], int, int]] = {}

    def prefill(self, prompts: dict[Hashable, list[int]]) -> np.ndarray:
        """The next-token logits after each prompt, in one call (prompts left-padded to the
        longest, the padding masked); their caches wait to join the next `decode`.

        Every prompt runs after one masked cache slot, so that no runtime ever gets an empty
        tensor (a TensorRT profile would need a zero-length past); the slot is dropped when the
        cache joins the batch.
        """
        lengths = [len(prompt) for prompt in prompts.values()]
        batch, longest = len(prompts), max(lengths)
        ids = np.zeros((batch, longest), dtype=np.int64)
        mask = np.zeros((batch, 1 + longest), dtype=np.int64)
        positions = np.zeros_like(ids)
        for row, (prompt, length) in enumerate(zip(prompts.values(), lengths, strict=True)):
            ids[row, longest - length :] = prompt
            mask[row, 1 + longest - length :] = 1
            positions[row, longest - length :] = np.arange(length)
        runtime = self.runtime
        slot = runtime.zeros((batch, runtime.kv_heads, 1, runtime.head_dim))
        logits, presents = runtime.run(ids, mask, positions, [slot] * (2 * runtime.layers))
        for row, (key, length) in enumerate(zip(prompts, lengths, strict=True)):
            self.joining[key] = (presents, row, length)
        return logits

    def decode(self, keys: Sequence[Hashable], tokens: list[int]) -> np.ndarray:
        """One step: the next-token logits of each key's sequence, in `keys` order."""
        if list(keys) != self.rows:
            self._arrange(keys)
        longest = max(self.lengths)
        mask = np.zeros((len(keys), longest + 1), dtype=np.int64)
        for row, length in enumerate(self.lengths):
            mask[row, longest - length :] = 1
        logits, self.past = self.runtime.run(
            np.array(tokens, dtype=np.int64)[:, None],
            mask,
            np.array(self.lengths, dtype=np.int64)[:, None],
            self.past,
        )
        self.lengths = [length + 1 for length in self.lengths]
        return logits

    def release(self, key: Hashable) -> None:
        """Forget a prefilled sequence that will not join (finished at once, or cancelled);
        rows of the batch leave at the next `decode` without it."""
        self.joining.pop(key, None)

    def reset(self) -> None:
        """Free every cache (nothing is running)."""
        self.rows, self.lengths, self.past, self.joining = [], [], [], {}

    def _arrange(self, keys: Sequence[Hashable]) -> None:
        """Re-pack the cache for a new batch: kept rows and joining sequences, left-padded."""
        rows = zip(self.rows, self.lengths, strict=True)
        sources = {key: (self.past, row, length) for row, (key, length) in enumerate(rows)}
        sources.update(self.joining)
        missing = [key for key in keys if key not in sources]
        if missing:
            raise KeyError(f"decode of {len(missing)} sequence(s) that were never prefilled")
        lengths = [sources[key][2] for key in keys]
        longest = max(lengths)
        runtime = self.runtime
        past = [
            runtime.zeros((len(keys), runtime.kv_heads, longest, runtime.head_dim))
            for _ in range(2 * runtime.layers)
        ]
        for row, key in enumerate(keys):
            arrays, source_row, length = sources[key]
            for layer, array in enumerate(arrays):
                past[layer][row, :, longest - length :] = array[source_row, :, -length:]
        self.rows, self.lengths, self.past = list(keys), lengths, past
        self.joining = {key: cache for key, cache in self.joining.items() if key not in keys}
