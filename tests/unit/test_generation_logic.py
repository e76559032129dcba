"""Generation logic without a server: incremental detokenization, stop words, sampling."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import TOKENIZERS
from tritonize.triton_models.common import RequestError
from tritonize.triton_models.generation import (
    GenerationParams,
    IncrementalDetokenizer,
    Sampler,
    StopMatcher,
)


def streamed(tokenizer: Any, prompt_ids: list[int], generated: list[int]) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    deltas = [detok.push(token) for token in generated]
    return [*deltas, detok.flush()]


@pytest.mark.parametrize("style", sorted(TOKENIZERS))
@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=30), split=st.integers(1, 8))
def test_deltas_concatenate_to_the_full_decode(style: str, text: str, split: int) -> None:
    """Any text (CJK, emoji, combining marks...), split anywhere into prompt and generation."""
    tokenizer = TOKENIZERS[style]()
    ids = tokenizer.encode("Start " + text).ids
    prompt_ids, generated = ids[:split], ids[split:]
    deltas = streamed(tokenizer, prompt_ids, generated)
    full, prefix = tokenizer.decode(ids), tokenizer.decode(prompt_ids)
    if "\ufffd" in prefix:  # a prompt cut inside a character: its text is not a prefix
        return
    assert "".join(deltas) == full[len(prefix) :]
    assert all("\ufffd" not in delta for delta in deltas[:-1] if "\ufffd" not in full)


@pytest.mark.parametrize("style", sorted(TOKENIZERS))
@pytest.mark.parametrize(
    "text", ["Hello world, hello", "今天天气很好 ok", "🚀🔥😀 done", "naïve café"]
)
def test_real_text_streams_without_lost_spaces_or_broken_characters(style: str, text: str) -> None:
    tokenizer = TOKENIZERS[style]()
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == text
    for split in range(1, len(ids)):
        deltas = streamed(tokenizer, ids[:split], ids[split:])
        assert "".join(deltas) == text[len(tokenizer.decode(ids[:split])) :]
        assert all("\ufffd" not in delta for delta in deltas)


@pytest.mark.parametrize("style", sorted(TOKENIZERS))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_token_ids_even_invalid_utf8_concatenate_exactly(
    style: str, data: st.DataObject
) -> None:
    """What a random model emits: byte tokens that need not form valid UTF-8."""
    tokenizer = TOKENIZERS[style]()
    prompt_ids = tokenizer.encode("Once upon a time").ids
    generated = data.draw(st.lists(st.integers(0, tokenizer.get_vocab_size() - 1), max_size=24))
    deltas = streamed(tokenizer, prompt_ids, generated)
    full, prefix = tokenizer.decode(prompt_ids + generated), tokenizer.decode(prompt_ids)
    assert "".join(deltas) == full[len(prefix) :]


def test_unfinished_bytes_wait_for_the_rest() -> None:
    tokenizer = TOKENIZERS["byte_level"]()
    ids = tokenizer.encode("a🚀").ids
    detok = IncrementalDetokenizer(tokenizer, ids[:1])
    deltas = [detok.push(token) for token in ids[1:]]
    assert deltas[-1] == "🚀" and all(d == "" for d in deltas[:-1])


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="ab cST", max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=8),
)
def test_stop_words_cut_the_text_wherever_deltas_split_it(text: str, cuts: list[int]) -> None:
    stops = ("STOP", "c c")
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    matcher = StopMatcher(stops)
    out, stopped = "", False
    for start, end in pairwise(bounds):
        emitted, stopped = matcher.feed(text[start:end])
        out += emitted
        if stopped:
            break
    if not stopped:
        out += matcher.flush()
    first = min((text.find(w) for w in stops if w in text), default=-1)
    assert out == (text[:first] if first >= 0 else text)
    assert stopped == (first >= 0)


def test_greedy_and_seeded_sampling() -> None:
    logits = np.array([0.1, 3.0, 2.9, -1.0])
    assert Sampler(GenerationParams(max_tokens=1)).next_token(logits) == 1
    seeded = GenerationParams(max_tokens=1, temperature=1.0, seed=7)
    first = [Sampler(seeded).next_token(logits) for _ in range(5)]
    assert len(set(first)) == 1  # same seed, same draw
    draws = Sampler(seeded)
    assert len({draws.next_token(logits) for _ in range(50)}) > 1  # it does sample
    top1 = Sampler(GenerationParams(max_tokens=1, temperature=1.0, top_k=1, seed=1))
    assert {top1.next_token(logits) for _ in range(20)} == {1}
    nucleus = Sampler(GenerationParams(max_tokens=1, temperature=1.0, top_p=0.5, seed=1))
    assert {nucleus.next_token(logits) for _ in range(50)} <= {1, 2}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (GenerationParams(max_tokens=0), r"`max_tokens` = 0: expected 1..64"),
        (GenerationParams(max_tokens=65), r"`max_tokens` = 65: expected 1..64"),
        (GenerationParams(max_tokens=1, temperature=-0.5), r"`temperature` = -0.5"),
        (GenerationParams(max_tokens=1, top_p=0.0), r"`top_p` = 0.0: expected a value in \(0, 1\]"),
        (GenerationParams(max_tokens=1, top_p=1.5), r"`top_p` = 1.5"),
        (GenerationParams(max_tokens=1, top_k=-1), r"`top_k` = -1"),
    ],
)
def test_invalid_parameters_are_named(params: GenerationParams, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        params.check(max_tokens_limit=64)
