"""Question answering, tokenizer step: QUESTION, CONTEXT (BYTES [1]) -> overlapping windows.

Each window is the question, then a slice of the context, with the tokenizer's special tokens
(`[CLS] question [SEP] context [SEP]` for BERT). Only the context is cut: a context longer than
one window is spread over W windows, returned as `input_ids`, `attention_mask`,
`token_type_ids` (INT64 [W, L], L the longest window) and `offsets` (INT64 [W, L, 2]: the
character span in CONTEXT of each context token, [-1, -1] for question, special and padding
tokens). The ensemble hands the [W, L] tensors to the engine as a batch of W.

Windows overlap so that an answer cut by one window's edge lies whole in the next. The
`stride` parameter is the number of context tokens two neighbouring windows share (the build
sets min(128, max_seq_len // 4)). A window holds `room` context tokens: max_seq_len minus the
question's tokens minus the special tokens. A long question leaves little room, so the stride
used is min(stride, room // 2): each window then brings at least half its room of new context
tokens. A context of C tokens needs 1 window if C <= room, else
1 + ceil((C - room) / (room - stride)); more than `max_windows` is refused, as are questions
over half the window (max_seq_len // 2 tokens), so that the context keeps at least half of it.

Windows are cut by the Rust `tokenizers` library (`only_second` truncation with a stride and
its overflowing encodings), which is what transformers' fast tokenizers do with
`truncation="only_second", stride=..., return_overflowing_tokens=True`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from .common import (
    ATTENTION_MASK,
    CONTEXT,
    INPUT_IDS,
    OFFSETS,
    QUESTION,
    TOKEN_TYPE_IDS,
    RequestError,
    error_responses,
    model_parameters,
    rejection,
    version_dir,
)
from .prefix_encoding import decode_text

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: the logic below stays importable and testable
    pb_utils = None

CONTEXT_SEQUENCE = 1  # `sequence_ids` value of the context's tokens (the question's is 0)


@dataclass(frozen=True)
class Windows:
    """One question and its context, cut into W windows of at most L tokens."""

    input_ids: np.ndarray  # INT64 [W, L]
    attention_mask: np.ndarray  # INT64 [W, L]
    token_type_ids: np.ndarray  # INT64 [W, L]
    offsets: np.ndarray  # INT64 [W, L, 2], [-1, -1] outside the context
    stride: int  # context tokens shared by neighbouring windows

    def tensors(self) -> dict[str, np.ndarray]:
        """The step's outputs by name."""
        return {
            INPUT_IDS: self.input_ids,
            ATTENTION_MASK: self.attention_mask,
            TOKEN_TYPE_IDS: self.token_type_ids,
            OFFSETS: self.offsets,
        }


def decode_one(raw: np.ndarray, name: str, max_bytes: int | None = None) -> str:
    """The one UTF-8 text of a BYTES [1] tensor; raise `RequestError` naming `name`."""
    if raw.shape != (1,):
        raise RequestError(f"`{name}` has shape {list(raw.shape)}: expected [1] (one text)")
    return decode_text(raw[0], f"`{name}`", max_bytes)


class QuestionWindows:
    """Decodes, checks and cuts one question and its context into token windows."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        max_seq_len: int,
        pad_id: int,
        stride: int,
        max_windows: int,
        max_text_bytes: int = 1_000_000,
    ) -> None:
        tokenizer.no_padding()
        tokenizer.no_truncation()
        # Two instances: truncation settings change per request on the windowing one.
        self.counter = tokenizer
        self.windower = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        self.max_seq_len = max_seq_len
        self.pad_id = pad_id
        self.stride = stride
        self.max_windows = max_windows
        self.max_text_bytes = max_text_bytes
        self.special_tokens = tokenizer.num_special_tokens_to_add(is_pair=True)
        # At most half the window, and always room for one context token.
        self.max_question_tokens = min(max_seq_len // 2, max_seq_len - self.special_tokens - 1)

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> QuestionWindows:
        return cls(tokenizers.Tokenizer.from_file(str(path)), **kwargs)

    def prepare(self, question: np.ndarray, context: np.ndarray) -> Windows:
        """The windows of a request's QUESTION and CONTEXT tensors (BYTES [1] each)."""
        return self.cut(
            decode_one(question, QUESTION, self.max_text_bytes),
            decode_one(context, CONTEXT, self.max_text_bytes),
        )

    def cut(self, question: str, context: str) -> Windows:
        """The windows of one question and its context; raise `RequestError` if refused."""
        room = self.max_seq_len - self.special_tokens - self._question_tokens(question)
        stride = min(self.stride, room // 2)
        self.windower.enable_truncation(self.max_seq_len, stride=stride, strategy="only_second")
        encoding = self.windower.encode(question, context)
        encodings = [encoding, *encoding.overflowing]
        context_tokens = self._context_tokens(encodings, room, stride)
        if not context_tokens:
            raise RequestError(
                f"`{CONTEXT}` yields no token: this model's tokenizer removes all of it; "
                "expected text"
            )
        if len(encodings) > self.max_windows:
            raise RequestError(
                f"`{CONTEXT}` is {context_tokens} tokens: it needs {len(encodings)} windows of "
                f"{room} context tokens (sharing {stride}), at most {self.max_windows} allowed"
            )
        return self._pad(encodings, stride)

    def _question_tokens(self, question: str) -> int:
        tokens = len(self.counter.encode(question, add_special_tokens=False).ids)
        if not tokens:
            raise RequestError(
                f"`{QUESTION}` yields no token: this model's tokenizer removes all of it; "
                "expected text"
            )
        if tokens > self.max_question_tokens:
            raise RequestError(
                f"`{QUESTION}` is {tokens} tokens: at most {self.max_question_tokens} allowed "
                f"(half of the {self.max_seq_len}-token window)"
            )
        return tokens

    @staticmethod
    def _context_tokens(encodings: list[tokenizers.Encoding], room: int, stride: int) -> int:
        """The context's token count: each window after the first brings room - stride new ones."""
        last = sum(1 for s in encodings[-1].sequence_ids if s == CONTEXT_SEQUENCE)
        return (len(encodings) - 1) * (room - stride) + last

    def _pad(self, encodings: list[tokenizers.Encoding], stride: int) -> Windows:
        count, width = len(encodings), max(len(e.ids) for e in encodings)
        ids = np.full((count, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((count, width), dtype=np.int64)
        types = np.zeros((count, width), dtype=np.int64)
        offsets = np.full((count, width, 2), -1, dtype=np.int64)
        for row, encoding in enumerate(encodings):
            length = len(encoding.ids)
            ids[row, :length] = encoding.ids
            mask[row, :length] = 1
            types[row, :length] = encoding.type_ids
            in_context = np.array(encoding.sequence_ids) == CONTEXT_SEQUENCE
            spans = np.array(encoding.offsets, dtype=np.int64).reshape(length, 2)
            offsets[row, :length][in_context] = spans[in_context]
        return Windows(ids, mask, types, offsets, stride)


class TritonPythonModel:
    """Thin adapter: tensors in, tensors out, errors as per-request responses."""

    def initialize(self, args: dict[str, str]) -> None:
        params = model_parameters(args)
        self.name = args["model_name"]
        self.windows = QuestionWindows.from_file(
            version_dir(args) / "tokenizer.json",
            max_seq_len=int(params["max_seq_len"]),
            pad_id=int(params["pad_token_id"]),
            stride=int(params["stride"]),
            max_windows=int(params["max_windows"]),
            max_text_bytes=int(params.get("max_text_bytes", 1_000_000)),
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            return [self._respond(request) for request in requests]
        except Exception as exc:  # never let a bug take the stub down: answer every request
            pb_utils.Logger.log_error(f"{self.name}: {exc!r}")
            return error_responses(pb_utils, len(requests), f"tokenizer failed: {exc}")

    def _respond(self, request: Any) -> Any:
        question = pb_utils.get_input_tensor_by_name(request, QUESTION).as_numpy()
        context = pb_utils.get_input_tensor_by_name(request, CONTEXT).as_numpy()
        try:
            windows = self.windows.prepare(question, context)
        except RequestError as exc:
            return rejection(pb_utils, exc)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, value) for name, value in windows.tensors().items()
            ]
        )
