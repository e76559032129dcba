"""Generation logic without Triton: request parameters, sampling, stop words, detokenization."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import tokenizers

from .common import RequestError
from .prefix_encoding import (
    CHARS_PER_TOKEN,
    content_tokens,
    encode_within,
    has_visible_text,
    min_prefix_chars,
)

MAX_STOP_WORDS = 16  # every step scans the pending text for each: bound the work per token
MAX_STOP_WORD_CHARS = 128


@dataclass(frozen=True)
class RequestField:
    """One request tensor of a generator: Triton's datatype, its numpy dtype and its default."""

    name: str
    datatype: str  # as Triton's protocol names it (BYTES, INT32, ...)
    dtype: type
    optional: bool = True
    default: object = None  # None: the field has no default (absent unless sent)
    dims: tuple[int, ...] = (1,)  # without the batch dimension


# The request a generator reads (TensorRT-LLM's names, so that Triton's OpenAI frontend and
# genai-perf work as is); anything else is refused. Configs, client and generator read it here.
REQUEST_SCHEMA = (
    RequestField("text_input", "BYTES", np.object_, optional=False),
    RequestField("max_tokens", "INT32", np.int32, optional=False, default=16),
    RequestField("stream", "BOOL", np.bool_, default=False),
    RequestField("temperature", "FP32", np.float32, default=0.0),  # 0: greedy
    RequestField("top_k", "INT32", np.int32, default=0),  # 0: off
    RequestField("top_p", "FP32", np.float32, default=1.0),
    RequestField("seed", "UINT64", np.uint64),
    RequestField("stop_words", "BYTES", np.object_, default=(), dims=(-1,)),
    RequestField("end_id", "INT32", np.int32),
    RequestField("pad_id", "INT32", np.int32),
    RequestField("exclude_input_in_output", "BOOL", np.bool_, default=True),
)
REQUEST_FIELDS = tuple(f.name for f in REQUEST_SCHEMA)
REQUEST_DEFAULTS = {f.name: f.default for f in REQUEST_SCHEMA if f.default is not None}


def usable_window(context_window: int) -> int:
    """The longest prompt a context window takes: one token must be left to generate."""
    return context_window - 1


@dataclass(frozen=True)
class GenerationParams:
    """One request's parameters (TensorRT-LLM's tensor names), validated."""

    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    seed: int | None = None
    stop_words: tuple[str, ...] = ()
    end_ids: frozenset[int] = field(default_factory=frozenset)
    stream: bool = False
    exclude_input_in_output: bool = True

    def check(self, max_tokens_limit: int) -> None:
        if not 0 < self.max_tokens <= max_tokens_limit:
            raise RequestError(f"`max_tokens` = {self.max_tokens}: expected 1..{max_tokens_limit}")
        if not self.temperature >= 0:
            raise RequestError(f"`temperature` = {self.temperature}: expected >= 0")
        if not 0 < self.top_p <= 1:
            raise RequestError(f"`top_p` = {self.top_p}: expected a value in (0, 1]")
        if self.top_k < 0:
            raise RequestError(f"`top_k` = {self.top_k}: expected >= 0 (0 turns it off)")
        check_stop_words(self.stop_words)


def check_stop_words(words: tuple[str, ...] | list[str]) -> None:
    """At most MAX_STOP_WORDS words of at most MAX_STOP_WORD_CHARS characters each."""
    if len(words) > MAX_STOP_WORDS:
        raise RequestError(f"`stop_words` has {len(words)} words: at most {MAX_STOP_WORDS} allowed")
    for i, word in enumerate(words):
        if len(word) > MAX_STOP_WORD_CHARS:
            raise RequestError(
                f"`stop_words`[{i}] is {len(word)} characters: "
                f"at most {MAX_STOP_WORD_CHARS} allowed"
            )


def check_token_id(name: str, value: int, vocab_size: int) -> None:
    """A token id the decoder can produce: 0..vocab_size - 1."""
    if not 0 <= value < vocab_size:
        raise RequestError(f"`{name}` = {value}: expected a token id in 0..{vocab_size - 1}")


def check_fields(names: set[str]) -> None:
    """Refuse fields the generator does not read (a typo such as `temprature` must not pass)."""
    unknown = sorted(names - set(REQUEST_FIELDS))
    if unknown:
        raise RequestError(
            f"unknown field(s) {', '.join(f'`{n}`' for n in unknown)}: "
            f"allowed are {', '.join(REQUEST_FIELDS)}"
        )


class PromptEncoder:
    """Prompt ids, refused before any decoding when they cannot fit the context window.

    Only a bounded prefix of the prompt is tokenized (prefix_encoding.py): a 10 MB prompt is
    refused after a few kilobytes of it, not after tokenizing all of it.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, context_window: int) -> None:
        self.limit = usable_window(context_window)
        self.context_window = context_window
        self.tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.limit)
        self.exact_count_chars = 2 * max(CHARS_PER_TOKEN * self.limit, min_prefix_chars(tokenizer))
        self.counter = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        self.counter.no_padding()
        self.counter.no_truncation()

    def encode(self, text: str) -> list[int]:
        if not text or text.isspace():  # no stripped copy of a long prompt
            raise RequestError("`text_input` is empty: expected a prompt")
        if not has_visible_text(text):
            raise RequestError(
                "`text_input` has no visible character (only control or format characters, "
                "whitespace or combining marks): expected a prompt"
            )
        (encoding,) = encode_within(self.tokenizer, [text], self.limit)
        if encoding.overflowing:
            raise RequestError(
                f"`text_input` is {self._size(text)}: the context window is "
                f"{self.context_window}, so at most {self.limit} fit"
            )
        if not content_tokens(encoding):
            raise RequestError("`text_input` yields no token: the tokenizer removes all of it")
        return list(encoding.ids)

    def _size(self, text: str) -> str:
        """The exact token count where counting is cheap; a bound where it is not."""
        if len(text) <= self.exact_count_chars:
            return f"{len(self.counter.encode(text).ids)} tokens"
        return f"over {self.limit} tokens ({len(text)} characters)"


class Sampler:
    """Greedy, or temperature / top-k / top-p sampling from a seeded generator."""

    def __init__(self, params: GenerationParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def next_token(self, logits: np.ndarray) -> int:
        p = self.params
        if p.temperature == 0:
            return int(np.argmax(logits))
        scores = logits.astype(np.float64) / p.temperature
        if p.top_k:
            kth = np.sort(scores)[-min(p.top_k, scores.size)]
            scores = np.where(scores >= kth, scores, -np.inf)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        if p.top_p < 1:
            order = np.argsort(-probs)
            keep = np.cumsum(probs[order]) - probs[order] < p.top_p  # the smallest nucleus
            mask = np.zeros_like(probs, dtype=bool)
            mask[order[keep]] = True
            probs = np.where(mask, probs, 0.0)
            probs /= probs.sum()
        return int(self.rng.choice(probs.size, p=probs))


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class IncrementalDetokenizer:
    """Text deltas as tokens arrive, with no lost spaces and no broken characters.

    Each step decodes the whole sequence (prompt included, so that word-boundary rules such as
    SentencePiece's leading `▁` see their context) and emits what follows the text already sent.
    Two things are held back, because later tokens can still change them: trailing U+FFFD (the
    start of a multi-byte character whose other bytes come next), and the text of a trailing run
    of byte-fallback tokens (`<0xNN>`: the run decodes as one UTF-8 string, or as one U+FFFD
    per byte if it is not valid), skipped special tokens inside the run included. So the deltas
    concatenate exactly to the decode of everything after the prompt, even for byte sequences
    that are not valid UTF-8. Decoding is linear in the length, which the context window bounds.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids)
        self.prompt_chars = len(self._decode())
        self.sent = 0  # characters of the continuation already emitted

    def _decode(self, ids: list[int] | None = None) -> str:
        return str(
            self.tokenizer.decode(self.ids if ids is None else ids, skip_special_tokens=True)
        )

    def _may_join_next(self, token: int) -> bool:
        """A byte-fallback token, or one that decodes to nothing (a skipped special token):
        bytes on either side of it may still fuse with the next tokens."""
        if _BYTE_TOKEN.fullmatch(self.tokenizer.id_to_token(token) or ""):
            return True
        return self._decode([token]) == ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        settled = len(self.ids)
        while settled > 0 and self._may_join_next(self.ids[settled - 1]):
            settled -= 1
        text = self._decode(self.ids[:settled])[self.prompt_chars :]
        stable = len(text.rstrip("\ufffd"))
        delta = text[self.sent : max(stable, self.sent)]
        self.sent += len(delta)
        return delta

    def flush(self) -> str:
        """Whatever is still held back (an unfinished character stays U+FFFD)."""
        delta = self._decode()[self.prompt_chars + self.sent :]
        self.sent += len(delta)
        return delta


class StopMatcher:
    """Holds back text that may be the start of a stop word; cuts the text at a stop word."""

    def __init__(self, stop_words: tuple[str, ...]) -> None:
        self.stop_words = tuple(w for w in stop_words if w)
        self.pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """(text that is safe to emit, whether a stop word was reached)."""
        self.pending += delta
        for word in self.stop_words:
            at = self.pending.find(word)
            if at >= 0:
                text, self.pending = self.pending[:at], ""
                return text, True
        hold = max((self._partial(w) for w in self.stop_words), default=0)
        text = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(text) :]
        return text, False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text

    def _partial(self, word: str) -> int:
        """Length of the longest suffix of `pending` that starts `word`."""
        for size in range(min(len(word) - 1, len(self.pending)), 0, -1):
            if word.startswith(self.pending[-size:]):
                return size
        return 0
