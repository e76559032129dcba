"""Token classification postprocess: TEXT, logits, offsets -> ENTITIES (named entities).

The aggregation is Hugging Face's TokenClassificationPipeline with
`aggregation_strategy="simple"`: each token takes its most probable label; adjacent tokens whose
tags agree (`B-X` opens a group, `I-X` or a bare `X` continues one of the same `X`) form an
entity whose score is the mean of its tokens' scores, whose span runs from its first token's
start to its last token's end, and whose label is the tag without its `B-`/`I-` prefix. Special
and padding tokens take no part; groups labelled `O` are dropped.

Each text's entities are one UTF-8 JSON list of {"text", "label", "score", "start", "end"} in
order of `start`, where start/end are character offsets into the text and "text" is
TEXT[start:end]. Softmax runs in float64, so a reduced-precision engine only has to get logits
right. The step is public: every input is checked and a bad one refused by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from .common import (
    ENTITIES,
    LOGITS,
    OFFSETS,
    SPECIAL_TOKENS_MASK,
    TEXT,
    RequestError,
    error_responses,
    model_parameters,
    rejection,
)

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: the logic below stays importable and testable
    pb_utils = None

IGNORED_GROUP = "O"  # the pipeline's default `ignore_labels`


@dataclass(frozen=True)
class TokenPrediction:
    """One non-special token: its best label, that label's probability and its character span."""

    label: str
    score: float
    start: int
    end: int


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def split_tag(label: str) -> tuple[str, str]:
    """(`B` or `I`, entity type); a label without a B-/I- prefix counts as a continuation."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def group_tokens(tokens: list[TokenPrediction]) -> list[list[TokenPrediction]]:
    """Runs of adjacent tokens of one entity type, each opened by a `B-` tag or a type change."""
    groups: list[list[TokenPrediction]] = []
    for token in tokens:
        bi, tag = split_tag(token.label)
        if groups and bi != "B" and tag == split_tag(groups[-1][-1].label)[1]:
            groups[-1].append(token)
        else:
            groups.append([token])
    return groups


def entity_of(group: list[TokenPrediction], text: str) -> dict[str, Any]:
    """The JSON object of one group; its label is the first token's, without the prefix."""
    start, end = group[0].start, group[-1].end
    return {
        "text": text[start:end],
        "label": group[0].label.split("-", 1)[-1],
        "score": float(np.mean([token.score for token in group])),
        "start": start,
        "end": end,
    }


def decode_texts(raw: np.ndarray) -> list[str]:
    """UTF-8 texts from a BYTES tensor; raise `RequestError` naming the bad element."""
    texts = []
    for i, item in enumerate(raw.reshape(-1)):
        data = item if isinstance(item, bytes) else str(item).encode()
        try:
            texts.append(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise RequestError(
                f"`{TEXT}`[{i}] is not valid UTF-8 (byte {exc.start}: {exc.reason})"
            ) from None
    return texts


class EntityExtractor:
    """Turns per-token logits into entity spans through the checkpoint's `id2label`."""

    def __init__(self, labels: list[str]) -> None:
        if not labels:
            raise ValueError("`labels` is empty: expected the checkpoint's id2label as a list")
        self.labels = list(labels)

    def check_logits(self, logits: np.ndarray) -> None:
        """Raise `RequestError` unless `logits` is [batch, tokens, labels] of finite numbers."""
        if logits.ndim != 3 or logits.shape[2] != len(self.labels) or not logits.shape[0]:
            raise RequestError(
                f"`{LOGITS}` has shape {list(logits.shape)}: "
                f"expected [batch, tokens, {len(self.labels)}]"
            )
        if not np.isfinite(logits).all():
            raise RequestError(f"`{LOGITS}` holds NaN or infinite values: expected finite numbers")

    def check_alignment(
        self, texts: list[str], logits: np.ndarray, offsets: np.ndarray, special: np.ndarray
    ) -> None:
        """Raise `RequestError` unless texts, offsets and mask describe the logits' tokens."""
        batch, length = logits.shape[:2]
        if len(texts) != batch:
            raise RequestError(
                f"`{TEXT}` holds {len(texts)} texts and `{LOGITS}` {batch} rows: expected one "
                "text per row"
            )
        if offsets.shape != (batch, length, 2):
            raise RequestError(
                f"`{OFFSETS}` has shape {list(offsets.shape)}: expected [{batch}, {length}, 2] "
                f"to match `{LOGITS}`"
            )
        if special.shape != (batch, length):
            raise RequestError(
                f"`{SPECIAL_TOKENS_MASK}` has shape {list(special.shape)}: "
                f"expected [{batch}, {length}] to match `{LOGITS}`"
            )
        if not np.isin(special, (0, 1)).all():
            raise RequestError(
                f"`{SPECIAL_TOKENS_MASK}` holds values other than 0 and 1: expected 1 for "
                "special and padding tokens, 0 for the others"
            )
        for row, text in enumerate(texts):
            spans = offsets[row][special[row] == 0]
            bad = (spans[:, 0] < 0) | (spans[:, 0] > spans[:, 1]) | (spans[:, 1] > len(text))
            if bad.any():
                start, end = (int(v) for v in spans[bad.argmax()])
                raise RequestError(
                    f"`{OFFSETS}` row {row} holds the span [{start}, {end}]: expected "
                    f"0 <= start <= end <= {len(text)}, the length of `{TEXT}`[{row}]"
                )

    def extract(
        self, texts: list[str], logits: np.ndarray, offsets: np.ndarray, special: np.ndarray
    ) -> list[list[dict[str, Any]]]:
        """Each text's entities, in order of `start`."""
        self.check_logits(logits)
        self.check_alignment(texts, logits, offsets, special)
        probabilities = softmax(logits)
        return [
            self._entities(text, probabilities[row], offsets[row], special[row])
            for row, text in enumerate(texts)
        ]

    def postprocess(
        self, raw_texts: np.ndarray, logits: np.ndarray, offsets: np.ndarray, special: np.ndarray
    ) -> np.ndarray:
        """ENTITIES: BYTES [B, 1], one UTF-8 JSON list per text."""
        entities = self.extract(decode_texts(raw_texts), logits, offsets, special)
        encoded = [json.dumps(found, ensure_ascii=False).encode() for found in entities]
        return np.array(encoded, dtype=object).reshape(-1, 1)

    def _entities(
        self, text: str, probabilities: np.ndarray, offsets: np.ndarray, special: np.ndarray
    ) -> list[dict[str, Any]]:
        kept = np.flatnonzero(special == 0)
        best = probabilities[kept].argmax(axis=1)
        tokens = [
            TokenPrediction(
                self.labels[label], float(probabilities[index, label]), *map(int, offsets[index])
            )
            for index, label in zip(kept, best, strict=True)
        ]
        found = [entity_of(group, text) for group in group_tokens(tokens)]
        kept_entities = [entity for entity in found if entity["label"] != IGNORED_GROUP]
        return sorted(kept_entities, key=lambda entity: entity["start"])


class TritonPythonModel:
    """Thin adapter: tensors in, tensors out, errors as responses."""

    def initialize(self, args: dict[str, str]) -> None:
        self.name = args["model_name"]
        self.extractor = EntityExtractor(json.loads(model_parameters(args)["labels"]))

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            return [self._respond(r) for r in requests]
        except Exception as exc:  # answer every request rather than crash the stub
            pb_utils.Logger.log_error(f"{self.name}: {exc!r}")
            return error_responses(pb_utils, len(requests), f"postprocess failed: {exc}")

    def _respond(self, request: Any) -> Any:
        inputs = [
            pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            for name in (TEXT, LOGITS, OFFSETS, SPECIAL_TOKENS_MASK)
        ]
        try:
            entities = self.extractor.postprocess(*inputs)
        except RequestError as exc:
            return rejection(pb_utils, exc)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(ENTITIES, entities)])
