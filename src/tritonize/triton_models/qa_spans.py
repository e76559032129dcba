"""Question answering, postprocess step: span logits -> ANSWER, SCORE, START, END.

Inputs: CONTEXT (BYTES [1]), `span_logits` (FP32 [W, L, 2]: start logits in [..., 0], end
logits in [..., 1], one row per window of qa_windows.py; L may exceed the windows' length by
padding only) and the windows' `offsets` (INT64 [W, L, 2], [-1, -1] outside the context).

The span rule: in each window, a softmax of the start logits and one of the end logits over the
window's context tokens only (the question, special and padding tokens take no share). A
candidate span starts at or before its end and is at most `max_answer_len` tokens long; its
score is p_start * p_end. The best span over all windows wins; ties go to the earliest window,
then the earliest start (then the earliest end). START and END are the first token's start
character and the last token's end character in CONTEXT, and ANSWER is CONTEXT[START:END].
Everything is computed in float64, so a reduced-precision engine only has to get logits right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .common import (
    ANSWER,
    CONTEXT,
    END,
    OFFSETS,
    SCORE,
    SPAN_LOGITS,
    START,
    RequestError,
    error_responses,
    model_parameters,
    rejection,
)
from .qa_windows import decode_one

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: the logic below stays importable and testable
    pb_utils = None

DEFAULT_MAX_ANSWER_LEN = 15


@dataclass(frozen=True)
class Answer:
    """The best span: its text, score and character offsets into the context."""

    text: str
    score: float
    start: int
    end: int


@dataclass(frozen=True)
class _Candidate:
    score: float
    first_token: int
    last_token: int


def context_softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax in float64 of one window's logits at its context tokens."""
    shifted = logits.astype(np.float64) - logits.max()
    exp = np.exp(shifted)
    return exp / exp.sum()


def best_in_window(
    start_logits: np.ndarray, end_logits: np.ndarray, positions: np.ndarray, max_answer_len: int
) -> _Candidate:
    """The best span of one window whose context tokens sit at `positions` (ascending)."""
    p_start = context_softmax(start_logits[positions])
    p_end = context_softmax(end_logits[positions])
    scores = np.outer(p_start, p_end)
    length = positions[None, :] - positions[:, None] + 1  # tokens from start (row) to end (col)
    scores[(length < 1) | (length > max_answer_len)] = -1.0
    first, last = np.unravel_index(int(np.argmax(scores)), scores.shape)  # row-major: ties early
    return _Candidate(float(scores[first, last]), int(positions[first]), int(positions[last]))


class SpanFinder:
    """Finds the best answer span of a context from its windows' span logits."""

    def __init__(self, max_answer_len: int = DEFAULT_MAX_ANSWER_LEN) -> None:
        if max_answer_len < 1:
            raise ValueError(f"max_answer_len is {max_answer_len}: expected 1 or more tokens")
        self.max_answer_len = max_answer_len

    def answer(self, context: np.ndarray, span_logits: np.ndarray, offsets: np.ndarray) -> Answer:
        """The best answer for a request's tensors; raise `RequestError` if they are invalid."""
        # No size limit: the tokenizer step has already refused contexts over it.
        return self.find(decode_one(context, CONTEXT), span_logits, offsets)

    def find(self, context: str, span_logits: np.ndarray, offsets: np.ndarray) -> Answer:
        """The best span of `context` over all windows."""
        check_offsets(offsets, len(context))
        check_span_logits(span_logits, offsets.shape[:2])
        best: tuple[int, _Candidate] | None = None
        for window in range(offsets.shape[0]):
            positions = np.flatnonzero(offsets[window, :, 0] >= 0)
            if not positions.size:
                continue
            candidate = best_in_window(
                span_logits[window, :, 0], span_logits[window, :, 1], positions,
                self.max_answer_len,
            )  # fmt: skip
            if best is None or candidate.score > best[1].score:
                best = (window, candidate)
        if best is None:
            raise RequestError(f"`{OFFSETS}` marks no context token: expected at least one")
        window, candidate = best
        start = int(offsets[window, candidate.first_token, 0])
        end = int(offsets[window, candidate.last_token, 1])
        return Answer(context[start:end], candidate.score, start, end)


def check_offsets(offsets: np.ndarray, context_chars: int) -> None:
    """Raise `RequestError` unless `offsets` is [W, L, 2] of spans in the context or [-1, -1]."""
    if offsets.ndim != 3 or offsets.shape[2] != 2 or not offsets.shape[0] or not offsets.shape[1]:
        raise RequestError(
            f"`{OFFSETS}` has shape {list(offsets.shape)}: expected [windows, tokens, 2]"
        )
    outside = (offsets == -1).all(axis=2)
    starts, ends = offsets[..., 0], offsets[..., 1]
    valid = (starts >= 0) & (starts <= ends) & (ends <= context_chars)
    if not (outside | valid).all():
        raise RequestError(
            f"`{OFFSETS}` holds a span outside the {context_chars}-character context: "
            "expected 0 <= start <= end <= its length, or [-1, -1]"
        )


def check_span_logits(span_logits: np.ndarray, windows_shape: tuple[int, ...]) -> None:
    """Raise `RequestError` unless `span_logits` is [W, L', 2] finite numbers with L' >= L."""
    windows, tokens = windows_shape
    if (
        span_logits.ndim != 3
        or span_logits.shape[0] != windows
        or span_logits.shape[1] < tokens
        or span_logits.shape[2] != 2
    ):
        raise RequestError(
            f"`{SPAN_LOGITS}` has shape {list(span_logits.shape)}: expected "
            f"[{windows}, {tokens} or more, 2] for {OFFSETS} of shape [{windows}, {tokens}, 2]"
        )
    if not np.isfinite(span_logits[:, :tokens]).all():
        raise RequestError(f"`{SPAN_LOGITS}` holds NaN or infinite values: expected finite numbers")


class TritonPythonModel:
    """Thin adapter: tensors in, tensors out, errors as per-request responses."""

    def initialize(self, args: dict[str, str]) -> None:
        self.name = args["model_name"]
        params = model_parameters(args)
        self.finder = SpanFinder(int(params.get("max_answer_len", DEFAULT_MAX_ANSWER_LEN)))

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            return [self._respond(request) for request in requests]
        except Exception as exc:  # answer every request rather than crash the stub
            pb_utils.Logger.log_error(f"{self.name}: {exc!r}")
            return error_responses(pb_utils, len(requests), f"postprocess failed: {exc}")

    def _respond(self, request: Any) -> Any:
        def tensor(name: str) -> np.ndarray:
            return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

        try:
            answer = self.finder.answer(tensor(CONTEXT), tensor(SPAN_LOGITS), tensor(OFFSETS))
        except RequestError as exc:
            return rejection(pb_utils, exc)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(ANSWER, np.array([answer.text.encode()], dtype=object)),
                pb_utils.Tensor(SCORE, np.array([answer.score], dtype=np.float32)),
                pb_utils.Tensor(START, np.array([answer.start], dtype=np.int64)),
                pb_utils.Tensor(END, np.array([answer.end], dtype=np.int64)),
            ]
        )
