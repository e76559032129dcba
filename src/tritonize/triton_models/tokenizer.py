"""Tokenizer step: TEXT (BYTES [B, 1]) -> input_ids, attention_mask (INT64 [B, L]), TRUNCATED.

Tasks on text pairs name two inputs (rerank: QUERY and TEXT), encoded as pairs: the longest
text is truncated first, as transformers' `truncation=True` does. Where the task asks, the step
also returns `token_type_ids` (which text of the pair a token is in), `offsets` (each token's
character span in its text) and `special_tokens_mask` (1 for special and padding tokens).

All texts of all requests in one `execute` are encoded in a single `encode_batch` call. Each
request is padded to its own longest text only: the `local` engine step declares its inputs
ragged and groups the rows of the requests it batches by length, so requests of any length
merge there. For fixed-shape engines (TensorRT, ONNX Runtime backend) `pad_buckets` rounds
each request up to the next bucket length, so that requests of similar length share a shape
and merge.

Texts longer than `max_seq_len` tokens are truncated (the documented choice, as
sentence-transformers does); each truncation is logged, counted in a metric and flagged in the
TRUNCATED output, never silent. Only a bounded prefix of a long text is tokenized
(prefix_encoding.py), so a megabyte text costs about what its first kilobytes cost. Texts with
nothing to embed (empty, whitespace, control or format characters, lone combining marks, or
anything the tokenizer's normaliser removes entirely) are refused like empty text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from .common import (
    ATTENTION_MASK,
    INPUT_IDS,
    OFFSETS,
    SPECIAL_TOKENS_MASK,
    TEXT,
    TOKEN_TYPE_IDS,
    TRUNCATED,
    RequestError,
    error_responses,
    metric_labels,
    model_parameters,
    rejection,
    version_dir,
)
from .features import INPUT, feature_metrics, input_counts
from .prefix_encoding import (
    content_tokens,
    decode_text,
    encode_pairs_within,
    encode_within,
    side_tokenizer,
)
from .sampling import RequestSampler

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: the logic below stays importable and testable
    pb_utils = None


Texts = list[str] | list[tuple[str, str]]  # one request's texts, or its text pairs


@dataclass(frozen=True)
class EncodedBatch:
    """One request's texts as padded token ids."""

    input_ids: np.ndarray  # INT64 [B, L]
    attention_mask: np.ndarray  # INT64 [B, L]
    truncated: np.ndarray  # BOOL [B, 1]
    num_tokens: int  # real (unpadded) tokens in the batch
    tokenless: tuple[int, ...] = ()  # rows whose text yields no token of its own
    token_type_ids: np.ndarray | None = None  # INT64 [B, L]
    offsets: np.ndarray | None = None  # INT64 [B, L, 2]
    special_tokens_mask: np.ndarray | None = None  # INT64 [B, L], padding included

    def tensors(self, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The named outputs of the step (TRUNCATED, ids, mask and any extra)."""
        every = {
            INPUT_IDS: self.input_ids,
            ATTENTION_MASK: self.attention_mask,
            TRUNCATED: self.truncated,
            TOKEN_TYPE_IDS: self.token_type_ids,
            OFFSETS: self.offsets,
            SPECIAL_TOKENS_MASK: self.special_tokens_mask,
        }
        return {name: every[name] for name in names}  # type: ignore[misc]


class TextTokenizer:
    """Decodes, checks and tokenizes texts with the Rust `tokenizers` library."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        max_seq_len: int,
        pad_id: int,
        max_text_bytes: int = 1_000_000,
        pad_buckets: tuple[int, ...] = (),
    ) -> None:
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_seq_len)
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.pad_id = pad_id
        self.max_text_bytes = max_text_bytes
        self.pad_buckets = tuple(sorted(pad_buckets))
        self._sides: tokenizers.Tokenizer | None = None  # made for the first text pair
        self.unknown_id = unknown_token_id(tokenizer)

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> TextTokenizer:
        return cls(tokenizers.Tokenizer.from_file(str(path)), **kwargs)

    def decode_texts(self, raw: np.ndarray, name: str = TEXT) -> list[str]:
        """UTF-8 texts from the BYTES tensor `name`; raise `RequestError` naming the bad
        element."""
        return [
            decode_text(item, f"`{name}`[{i}]", self.max_text_bytes)
            for i, item in enumerate(raw.reshape(-1))
        ]

    def encode(self, requests: list[Texts]) -> list[EncodedBatch]:
        """Encode every request's texts (or pairs) in one call; pad each request to its
        longest text."""
        flat = [text for texts in requests for text in texts]
        if flat and isinstance(flat[0], tuple):
            if self._sides is None:
                self._sides = side_tokenizer(self.tokenizer, self.max_seq_len)
            encodings = encode_pairs_within(self.tokenizer, self._sides, flat, self.max_seq_len)  # type: ignore[arg-type]
        else:
            encodings = encode_within(self.tokenizer, flat, self.max_seq_len)  # type: ignore[arg-type]
        batches, start = [], 0
        for texts in requests:
            batches.append(self._pad(encodings[start : start + len(texts)]))
            start += len(texts)
        return batches

    def feature_counts(
        self, requests: Sequence[tuple[Texts, EncodedBatch]]
    ) -> dict[str, np.ndarray]:
        """The input features of requests' texts, counted in one pass (a pair counts as its
        two texts joined)."""
        batches = [batch for _, batch in requests]
        masks = [batch.attention_mask for batch in batches]
        tokens = np.concatenate([mask.sum(axis=1) for mask in masks])
        unknown = np.concatenate([
            ((batch.input_ids == self.unknown_id) & (mask == 1)).sum(axis=1)
            for batch, mask in zip(batches, masks, strict=True)
        ])  # fmt: skip
        truncated = np.concatenate([batch.truncated.reshape(-1) for batch in batches])
        joined = [t if isinstance(t, str) else " ".join(t) for texts, _ in requests for t in texts]
        return input_counts(joined, tokens, truncated, unknown)

    def _pad(self, encodings: list[tokenizers.Encoding]) -> EncodedBatch:
        width = max(len(enc.ids) for enc in encodings)
        width = next((b for b in self.pad_buckets if b >= width), width)
        rows = len(encodings)
        ids = np.full((rows, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((rows, width), dtype=np.int64)
        type_ids = np.zeros((rows, width), dtype=np.int64)
        offsets = np.zeros((rows, width, 2), dtype=np.int64)
        special = np.ones((rows, width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            type_ids[row, :n] = enc.type_ids
            offsets[row, :n] = enc.offsets
            special[row, :n] = enc.special_tokens_mask
        truncated = np.array([[bool(enc.overflowing)] for enc in encodings], dtype=bool)
        tokenless = tuple(row for row, enc in enumerate(encodings) if not content_tokens(enc))
        return EncodedBatch(
            ids, mask, truncated, int(mask.sum()), tokenless, type_ids, offsets, special
        )


def unknown_token_id(tokenizer: tokenizers.Tokenizer) -> int:
    """The id of the tokenizer's unknown token, or -1 where it has none (byte-level BPE)."""
    model = json.loads(tokenizer.to_str()).get("model", {})
    if isinstance(model.get("unk_id"), int):  # Unigram
        return int(model["unk_id"])
    token = model.get("unk_token")
    found = tokenizer.token_to_id(token) if token else None
    return -1 if found is None else found


class TritonPythonModel:
    """Thin adapter: tensors in, tensors out, errors as per-request responses."""

    def initialize(self, args: dict[str, str]) -> None:
        params = model_parameters(args)
        self.name = args["model_name"]
        self.tokenizer = TextTokenizer.from_file(
            version_dir(args) / "tokenizer.json",
            max_seq_len=int(params["max_seq_len"]),
            pad_id=int(params["pad_token_id"]),
            max_text_bytes=int(params.get("max_text_bytes", 1_000_000)),
            pad_buckets=tuple(json.loads(params.get("pad_buckets", "[]"))),
        )
        # The task's text inputs (one, or two for pairs) and its outputs besides ids and mask.
        self.inputs = tuple(json.loads(params.get("text_inputs", json.dumps([TEXT]))))
        extras = tuple(json.loads(params.get("extra_outputs", "[]")))
        self.outputs = (INPUT_IDS, ATTENTION_MASK, TRUNCATED, *extras)
        self.metrics = _TokenizerMetrics(self.name)
        self.features = feature_metrics(pb_utils, args, INPUT)
        self.sampler = RequestSampler.for_model(params.get("ensemble", self.name))

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            return self._execute(requests)
        except Exception as exc:  # never let a bug take the stub down: answer every request
            pb_utils.Logger.log_error(f"{self.name}: {exc!r}")
            return error_responses(pb_utils, len(requests), f"tokenizer failed: {exc}")

    def _execute(self, requests: list[Any]) -> list[Any]:
        start = time.perf_counter()
        responses: list[Any] = [None] * len(requests)
        valid: dict[int, Texts] = {}
        for i, request in enumerate(requests):
            try:
                valid[i] = self._texts(request)
            except RequestError as exc:
                responses[i] = rejection(pb_utils, exc)
        counted = []
        for i, batch in zip(valid, self.tokenizer.encode(list(valid.values())), strict=True):
            responses[i] = self._respond(batch)
            if not batch.tokenless:  # refused: not traffic the model saw
                counted.append((valid[i], batch))
        if self.features is not None and counted:
            self.features.add(self.tokenizer.feature_counts(counted))
        # One metric update per execute, not per request: each is a round trip to Triton.
        self.metrics.record(
            seconds=time.perf_counter() - start,
            tokens=sum(batch.num_tokens for _, batch in counted),
            truncations=sum(int(batch.truncated.sum()) for _, batch in counted),
        )
        return responses

    def finalize(self) -> None:
        if self.features is not None:
            self.features.flush()
        if self.sampler is not None:
            self.sampler.close()

    def _texts(self, request: Any) -> Texts:
        """The request's texts, or its pairs when the task takes two inputs."""
        columns = {
            name: self.tokenizer.decode_texts(
                pb_utils.get_input_tensor_by_name(request, name).as_numpy(), name
            )
            for name in self.inputs
        }
        if self.sampler is not None:
            self.sampler.offer(columns)
        texts = list(columns.values())
        return texts[0] if len(texts) == 1 else list(zip(*texts, strict=True))

    def _respond(self, batch: EncodedBatch) -> Any:
        if batch.tokenless:
            where = " or ".join(f"`{name}`" for name in self.inputs)
            problem = f"{where}[{batch.tokenless[0]}] yields no token: this model's tokenizer "
            return rejection(pb_utils, RequestError(problem + "removes all of it; expected text"))
        truncations = int(batch.truncated.sum())
        if truncations:
            pb_utils.Logger.log_warn(
                f"{self.name}: truncated {truncations} text(s) to "
                f"max_seq_len={self.tokenizer.max_seq_len} tokens"
            )
        tensors = batch.tensors(self.outputs)
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(name, value) for name, value in tensors.items()]
        )


class _TokenizerMetrics:
    """tritonize_* custom metrics, served on Triton's /metrics endpoint."""

    def __init__(self, model: str) -> None:
        family = pb_utils.MetricFamily
        # Families must outlive their metrics, so both are kept on the instance.
        self.families = {
            "duration": family(
                name="tritonize_tokenize_duration_seconds",
                description="Time to decode and tokenize one execute() batch",
                kind=family.HISTOGRAM,
            ),
            "tokens": family(
                name="tritonize_input_tokens_total",
                description="Input tokens produced by the tokenizer (padding excluded)",
                kind=family.COUNTER,
            ),
            "truncations": family(
                name="tritonize_truncated_texts_total",
                description="Texts truncated to max_seq_len tokens",
                kind=family.COUNTER,
            ),
        }
        labels = metric_labels(model)
        self.duration = self.families["duration"].Metric(
            labels=labels, buckets=[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
        )
        self.tokens = self.families["tokens"].Metric(labels=labels)
        self.truncations = self.families["truncations"].Metric(labels=labels)

    def record(self, seconds: float, tokens: int, truncations: int) -> None:
        """One execute: its duration, and the tokens and truncations of all its requests."""
        self.duration.observe(seconds)
        if tokens:
            self.tokens.increment(tokens)
        if truncations:
            self.truncations.increment(truncations)
