"""Compare an exported artefact against its reference at several shapes; report every miss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tokenizers

from tritonize.triton_models.common import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS

# Varied on purpose: lengths, scripts, emoji, accents, numbers.
SAMPLE_TEXTS = (
    "Hello world.",
    "Triton serves transformer models over HTTP and gRPC.",
    "A much longer sentence that goes on for a while, so that padding in the batch matters, "
    "and the mask has to keep the padded positions out of the pooled result.",
    "今天天气很好，我们去公园散步吧。",
    "Emoji in text 🚀🔥 should tokenize without trouble.",
    "Café, naïve, façade, jalapeño: accents survive.",
    "3.14159 is pi; 2.71828 is e.",
    "short",
)

# Texts whose reference outputs are stored at build time (golden.json) for `tritonize verify`.
GOLDEN_TEXTS = SAMPLE_TEXTS


@dataclass(frozen=True)
class ValidationCase:
    """One named input batch."""

    name: str
    input_ids: np.ndarray
    attention_mask: np.ndarray

    def feeds(self, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The graph's inputs by name. A pair graph's token_type_ids mark the second half of
        each row's tokens as the second text, so that both types are exercised."""
        every = {INPUT_IDS: self.input_ids, ATTENTION_MASK: self.attention_mask}
        if TOKEN_TYPE_IDS in names:
            position = np.arange(self.input_ids.shape[1])[None, :]
            half = self.attention_mask.sum(axis=1, keepdims=True) // 2
            second = (position >= half) & (self.attention_mask == 1)
            every[TOKEN_TYPE_IDS] = second.astype(np.int64)
        return {name: every[name] for name in names}


def encode_padded(
    tokenizer: tokenizers.Tokenizer, texts: list[str], max_seq_len: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize, truncate at `max_seq_len`, and right-pad to the longest text."""
    rows = [enc.ids[:max_seq_len] for enc in tokenizer.encode_batch(texts)]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def validation_cases(
    tokenizer: tokenizers.Tokenizer, max_batch_size: int, max_seq_len: int, pad_id: int
) -> list[ValidationCase]:
    """Batch 1; max batch of mixed lengths (padded); full sequence length."""
    mixed = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(max_batch_size)]
    longest = " ".join(SAMPLE_TEXTS * (1 + max_seq_len // 8))
    cases = {
        "batch 1": [SAMPLE_TEXTS[1]],
        f"max batch {max_batch_size}, mixed lengths padded": mixed,
        f"sequence length {max_seq_len}": [longest, SAMPLE_TEXTS[0]],
    }
    return [
        ValidationCase(name, *encode_padded(tokenizer, texts, max_seq_len, pad_id))
        for name, texts in cases.items()
    ]


def compare(
    case: str, output: str, reference: np.ndarray, actual: np.ndarray, atol: float, rtol: float
) -> list[str]:
    """Describe each way `actual` misses `reference`; empty when it matches."""
    where = f"{case}: output `{output}`"
    if actual.shape != reference.shape:
        return [f"{where} has shape {actual.shape}, expected {reference.shape}"]
    if not np.all(np.isfinite(actual)):
        return [f"{where} has {int(np.sum(~np.isfinite(actual)))} non-finite values"]
    if np.allclose(actual, reference, atol=atol, rtol=rtol):
        return []
    diff = float(np.max(np.abs(actual - reference)))
    return [f"{where} max abs diff {diff:.3g} exceeds atol={atol:g}, rtol={rtol:g}"]
