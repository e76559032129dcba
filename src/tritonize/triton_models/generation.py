"""Generation logic without Triton: request parameters, sampling, stop words, detokenization."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tokenizers

from .common import RequestError


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


class IncrementalDetokenizer:
    """Text deltas as tokens arrive, with no lost spaces and no broken characters.

    Each delta is the difference between decoding a short window of recent tokens with and
    without the newest ones, so a tokenizer's word-boundary handling (a leading `▁`, byte-level
    spaces) sees its context. A delta ending in U+FFFD (an unfinished multi-byte character) waits
    for the next token. Deltas concatenate to the decode of everything after the prompt.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids)
        self.prefix_offset = max(len(self.ids) - 6, 0)
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an unfinished character stays U+FFFD)."""
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return after[len(before) :]


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
