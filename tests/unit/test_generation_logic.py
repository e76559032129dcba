"""Generation logic without a server: incremental detokenization, stop words, sampling."""

from __future__ import annotations

import time
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import TOKENIZERS
from tritonize.triton_models.common import RequestError
from tritonize.triton_models.generation import (
    MAX_STOP_WORD_CHARS,
    MAX_STOP_WORDS,
    GenerationParams,
    IncrementalDetokenizer,
    PromptEncoder,
    Sampler,
    StopMatcher,
    check_fields,
    check_token_id,
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
        (
            GenerationParams(max_tokens=1, stop_words=("x",) * (MAX_STOP_WORDS + 1)),
            rf"`stop_words` has {MAX_STOP_WORDS + 1} words: at most {MAX_STOP_WORDS} allowed",
        ),
        (
            GenerationParams(max_tokens=1, stop_words=("ok", "y" * (MAX_STOP_WORD_CHARS + 1))),
            rf"`stop_words`\[1\] is {MAX_STOP_WORD_CHARS + 1} characters: at most 128",
        ),
    ],
)
def test_invalid_parameters_are_named(params: GenerationParams, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        params.check(max_tokens_limit=64)


def test_unknown_fields_are_refused_naming_the_allowed_ones() -> None:
    check_fields({"text_input", "max_tokens", "temperature"})
    with pytest.raises(RequestError, match=r"unknown field\(s\) `temprature`: allowed are text_"):
        check_fields({"text_input", "temprature"})


@pytest.mark.parametrize("value", [-1, 400, 2**40])
def test_token_ids_out_of_the_vocabulary_are_named(value: int) -> None:
    check_token_id("end_id", 0, 400)
    check_token_id("end_id", 399, 400)
    with pytest.raises(RequestError, match=rf"`end_id` = {value}: expected a token id in 0..399"):
        check_token_id("end_id", value, 400)


@pytest.fixture(params=sorted(TOKENIZERS))
def prompts(request: pytest.FixtureRequest) -> PromptEncoder:
    return PromptEncoder(TOKENIZERS[request.param](), context_window=64)


def test_a_prompt_that_fits_gets_the_tokenizers_ids(prompts: PromptEncoder) -> None:
    text = "The quick brown fox jumps over the lazy dog"
    assert prompts.encode(text) == prompts.counter.encode(text).ids


def test_a_prompt_over_the_window_is_refused_with_its_length(prompts: PromptEncoder) -> None:
    count = len(prompts.counter.encode("word " * 80).ids)
    with pytest.raises(RequestError, match=rf"`text_input` is {count} tokens: the context window"):
        prompts.encode("word " * 80)


def test_a_10mb_prompt_is_refused_after_a_bounded_prefix(prompts: PromptEncoder) -> None:
    text = "All work and no play makes a long prompt. " * 250_000
    start = time.perf_counter()
    with pytest.raises(RequestError, match=r"`text_input` is over 63 tokens \(10500000 char"):
        prompts.encode(text)
    elapsed = time.perf_counter() - start
    full = time.perf_counter()
    prompts.counter.encode(text[:1_000_000])  # a tenth of the prompt, tokenized whole
    tenth = time.perf_counter() - full
    print(f"10 MB prompt refused in {elapsed * 1000:.1f} ms; 1 MB tokenized in {tenth * 1000:.0f}")
    assert elapsed < tenth / 10


@pytest.mark.parametrize("text", ["", "  \n", "\0", "\u200b\ufeff", "\u0301"])
def test_prompts_without_text_are_refused(prompts: PromptEncoder, text: str) -> None:
    with pytest.raises(RequestError, match=r"`text_input` (is empty|has no visible character)"):
        prompts.encode(text)
