"""The Python-backend models' logic, without Triton."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from helpers import train_tokenizer
from tritonize.export.onnx_export import load_tokenizer
from tritonize.export.validation import SAMPLE_TEXTS
from tritonize.triton_models.classifier import Classifier
from tritonize.triton_models.common import RequestError
from tritonize.triton_models.onnx_runner import (
    OnnxEncoder,
    call_cost,
    check_request,
    default_threads,
    pad_and_stack,
    plan_calls,
)
from tritonize.triton_models.prefix_encoding import (
    encode_pairs_within,
    encode_within,
    has_visible_text,
    side_tokenizer,
)
from tritonize.triton_models.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def text_tokenizer(minilm_dir: Path) -> TextTokenizer:
    tokenizer, pad_id = load_tokenizer(minilm_dir, trust_remote_code=False)
    return TextTokenizer(tokenizer, max_seq_len=16, pad_id=pad_id, max_text_bytes=1000)


def test_token_ids_match_transformers(text_tokenizer: TextTokenizer, minilm_dir: Path) -> None:
    reference = AutoTokenizer.from_pretrained(minilm_dir)
    texts = list(SAMPLE_TEXTS)
    (batch,) = text_tokenizer.encode([texts])
    expected = reference(texts, padding=True, truncation=True, max_length=16, return_tensors="np")
    np.testing.assert_array_equal(batch.input_ids, expected["input_ids"])
    np.testing.assert_array_equal(batch.attention_mask, expected["attention_mask"])


def test_truncation_is_flagged_per_text(text_tokenizer: TextTokenizer) -> None:
    (batch,) = text_tokenizer.encode([["short", "word " * 40]])
    assert batch.truncated.tolist() == [[False], [True]]
    assert batch.input_ids.shape == (2, 16)
    assert batch.num_tokens == 3 + 16  # [CLS] short [SEP], then a full row


def test_each_request_is_padded_to_its_own_longest(text_tokenizer: TextTokenizer) -> None:
    together = text_tokenizer.encode([["a"], ["a b c d e f"], ["x", "y z"]])
    assert [b.input_ids.shape for b in together] == [(1, 3), (1, 8), (2, 4)]
    alone = text_tokenizer.encode([["x", "y z"]])[0]
    np.testing.assert_array_equal(together[2].input_ids, alone.input_ids)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", r"`TEXT`\[0\] is empty or whitespace only"),
        (b" \t\n ", r"`TEXT`\[0\] is empty or whitespace only"),
        (b"ok\xff\xfe", r"`TEXT`\[0\] is not valid UTF-8 \(byte 2"),
        (b"x" * 1001, r"`TEXT`\[0\] is 1001 bytes: at most 1000 allowed"),
        (b"\0", r"`TEXT`\[0\] has no visible character"),
        ("\u200b".encode(), r"`TEXT`\[0\] has no visible character"),
        ("\ufeff".encode(), r"`TEXT`\[0\] has no visible character"),
        (b"\x07\x1b \x7f", r"`TEXT`\[0\] has no visible character"),
        ("\u0301".encode(), r"`TEXT`\[0\] has no visible character"),
    ],
    ids=["empty", "whitespace", "utf8", "too-long", "nul", "zwsp", "bom", "controls", "lone-mark"],
)
def test_bad_texts_are_named(text_tokenizer: TextTokenizer, raw: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        text_tokenizer.decode_texts(np.array([[raw]], dtype=object))


def test_texts_the_normaliser_removes_are_flagged(text_tokenizer: TextTokenizer) -> None:
    """A private-use character passes the Unicode check, but MiniLM's normaliser drops it."""
    (batch,) = text_tokenizer.encode([["fine", "\ue000"]])
    assert batch.tokenless == (1,)


def test_bad_text_position_is_reported(text_tokenizer: TextTokenizer) -> None:
    with pytest.raises(RequestError, match=r"`TEXT`\[2\]"):
        text_tokenizer.decode_texts(np.array([[b"a"], ["b"], [b""]], dtype=object))


def test_pad_and_stack_merges_ragged_requests() -> None:
    a = {"input_ids": np.array([[5, 6, 7]]), "attention_mask": np.array([[1, 1, 1]]),
         "token_type_ids": np.array([[0, 1, 1]])}  # fmt: skip
    b = {"input_ids": np.array([[8], [9]]), "attention_mask": np.array([[1], [1]]),
         "token_type_ids": np.array([[1], [1]])}  # fmt: skip
    stacked = pad_and_stack([a, b], pad_id=3)
    assert stacked["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3], [9, 3, 3]]
    assert stacked["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0]]
    assert stacked["token_type_ids"].tolist() == [[0, 1, 1], [1, 0, 0], [1, 0, 0]]


def test_rows_of_one_length_run_as_one_call() -> None:
    (group,) = plan_calls(np.array([14] * 40))
    assert sorted(group) == list(range(40))


def test_a_long_row_runs_apart_from_short_ones() -> None:
    """One call for all would pad seven 8-token rows to 250 tokens."""
    groups = plan_calls(np.array([8, 8, 250, 8, 8, 8, 8, 8]))
    assert [sorted(g) for g in groups] == [[0, 1, 3, 4, 5, 6, 7], [2]]


def test_rows_of_near_lengths_share_a_call() -> None:
    """Padding two rows by a token or two costs less than another call."""
    assert len(plan_calls(np.array([10, 11, 12, 12]))) == 1


def _cost(lengths: np.ndarray, groups: list[np.ndarray]) -> float:
    return sum(float(call_cost(len(g), lengths[g].max())) for g in groups)


@given(st.lists(st.integers(1, 256), min_size=1, max_size=9))
@settings(max_examples=300, deadline=None)
def test_the_plan_is_the_cheapest_grouping(values: list[int]) -> None:
    """Every row once, and no grouping of the rows costs less (brute force over every
    partition of the rows into calls)."""
    lengths = np.array(values)
    groups = plan_calls(lengths)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(values)))

    def partitions(items: list[int]) -> Iterator[list[list[int]]]:
        if not items:
            yield []
            return
        first, rest = items[0], items[1:]
        for tail in partitions(rest):
            yield [[first], *tail]
            for i in range(len(tail)):
                yield [*tail[:i], [first, *tail[i]], *tail[i + 1 :]]

    cheapest = min(
        _cost(lengths, [np.array(g) for g in p]) for p in partitions(list(range(len(values))))
    )
    assert _cost(lengths, groups) <= cheapest + 1e-6


def test_classifier_matches_torch_softmax() -> None:
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 1.0, 0.5], [100.0, -100.0, 0.0]], dtype=np.float32)
    labels, scores, probabilities = Classifier(["neg", "neu", "pos"]).postprocess(logits)
    expected = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-7)
    assert [label.decode() for label in labels[:, 0]] == ["neu", "neg", "neg"]
    np.testing.assert_allclose(scores[:, 0], expected.max(axis=1), atol=1e-7)
    assert probabilities.dtype == np.float32 and labels.shape == (3, 1)


# -- the steps are public: every door checks what comes in --------------------------------------

IDS = np.array([[101, 2000, 102]])
MASK = np.ones((1, 3), dtype=np.int64)


@pytest.mark.parametrize(
    ("ids", "mask", "message"),
    [
        (IDS, np.zeros((1, 3), np.int64), r"`attention_mask` row 0 is all zeros"),
        (np.array([[101, -1, 102]]), MASK, r"`input_ids` holds -1: expected token ids in 0\.\.999"),
        (np.array([[101, 1000, 102]]), MASK, r"`input_ids` holds 1000: expected token ids in 0"),
        (IDS, np.ones((1, 4), np.int64), r"`input_ids` has shape \[1, 3\] and `attention_mask`"),
        (IDS[0], MASK[0], r"expected the same shape \[batch, sequence\]"),
        (IDS, np.array([[1, 2, 1]]), r"`attention_mask` holds values other than 0 and 1"),
        (IDS[:, :0], MASK[:, :0], r"`input_ids` is empty"),
    ],
    ids=["zero-mask", "minus-one", "over-vocab", "shapes", "1-d", "mask-values", "empty"],
)
def test_engine_requests_are_checked(ids: np.ndarray, mask: np.ndarray, message: str) -> None:
    check_request(np.array([[5, 99]]), np.array([[1, 0]]), vocab_size=100)  # fine
    with pytest.raises(RequestError, match=message):
        check_request(ids, mask, vocab_size=1000)


def test_engine_rows_longer_than_the_window_are_refused() -> None:
    check_request(IDS, MASK, vocab_size=3000, max_len=3)  # exactly the window
    with pytest.raises(RequestError, match=r"has 3 tokens per row: this engine takes at most 2"):
        check_request(IDS, MASK, vocab_size=3000, max_len=2)


def test_the_engine_finds_its_vocabulary_in_the_graph(classifier_repository: Path) -> None:
    graph = classifier_repository / "sentiment_engine.v1" / "1" / "model.onnx"
    encoder = OnnxEncoder(graph, output_name="logits", pad_id=0, threads=1)
    assert encoder.vocab_size == 30522  # tiny_configs/bert-classifier.json


@pytest.mark.parametrize(
    ("logits", "message"),
    [
        (np.zeros((2, 4), np.float32), r"`logits` has shape \[2, 4\]: expected \[batch, 3\]"),
        (np.zeros(3, np.float32), r"`logits` has shape \[3\]"),
        (np.array([[0.0, np.nan, 1.0]], np.float32), r"`logits` holds NaN or infinite values"),
        (np.array([[0.0, np.inf, 1.0]], np.float32), r"`logits` holds NaN or infinite values"),
    ],
)
def test_postprocess_checks_its_logits(logits: np.ndarray, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        Classifier(["neg", "neu", "pos"]).postprocess(logits)


# -- long texts: a bounded prefix is tokenized, with the same window as the whole text ----------

PIECES = st.sampled_from(
    [*"abcdefghij xyz  \n\t.,!?'-", "é", "e\u0301", "日本語", "🚀", "ß", "\u200b", "ﬁ"]
)
WORDS = st.one_of(
    st.lists(PIECES, min_size=1, max_size=12).map("".join),
    st.text(st.sampled_from("abc"), min_size=90, max_size=140),  # around WordPiece's 100
)
LONG_TEXTS = st.one_of(
    st.lists(WORDS, min_size=1, max_size=400).map(" ".join),
    st.lists(PIECES.filter(lambda p: " " not in p), max_size=1500).map("".join),  # no spaces
)


def wordpiece(minilm_dir: Path) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))


@pytest.fixture(scope="module", params=["wordpiece", "byte_level", "sentencepiece"])
def any_tokenizer(request: pytest.FixtureRequest, minilm_dir: Path) -> tokenizers.Tokenizer:
    if request.param == "wordpiece":
        return wordpiece(minilm_dir)
    return train_tokenizer(request.param)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=LONG_TEXTS, window=st.integers(min_value=3, max_value=48))
def test_prefix_window_equals_whole_text_window(
    any_tokenizer: tokenizers.Tokenizer, text: str, window: int
) -> None:
    tokenizer = any_tokenizer
    tokenizer.no_padding()
    tokenizer.enable_truncation(window)
    whole = tokenizer.encode(text)
    (bounded,) = encode_within(tokenizer, [text], window)
    assert bounded.ids == whole.ids
    assert bool(bounded.overflowing) == bool(whole.overflowing)


def test_a_long_text_is_tokenized_by_a_short_prefix(minilm_dir: Path) -> None:
    """A 900 kB text costs about what its first few kilobytes cost, not the whole text."""
    tokenizer = wordpiece(minilm_dir)
    tokenizer.enable_truncation(256)
    text = ("All work and no play makes a long text. " * 23_000)[:900_000]
    seen: list[int] = []
    encode_batch = tokenizer.encode_batch

    class Counting:  # the Rust tokenizer cannot be patched: wrap it
        model = tokenizer.model

        def encode_batch(self, texts: list[str]) -> list[tokenizers.Encoding]:
            seen.extend(len(t) for t in texts)
            return encode_batch(texts)

    (encoding,) = encode_within(Counting(), [text], 256)  # type: ignore[arg-type]
    assert encoding.ids == tokenizer.encode(text).ids and encoding.overflowing
    assert sum(seen) <= 8 * 256 * 3, seen


@pytest.mark.parametrize(
    "text", ["\0", "\u200b", "\ufeff", "\u0301", "\x07 \x01", " \u200b\ufeff\t", "\u0301" * 1000]
)
def test_texts_without_visible_characters_are_found(text: str) -> None:
    assert not has_visible_text(text)


@pytest.mark.parametrize("text", ["a", "!", "日本", "🚀", "\u200bx", "e\u0301", "1"])
def test_texts_with_visible_characters_pass(text: str) -> None:
    assert has_visible_text(text)


# -- text pairs (rerank) and token offsets (named entities) ----------------------------------------
PAIRS = [
    ("what is triton", "Triton serves models."),
    ("short", "word " * 40),  # the passage is cut
    ("a much longer query " * 10, "tiny"),  # the query is cut
    ("Café naïve?", "今天天气很好"),
]


def test_pairs_match_transformers_longest_first(minilm_dir: Path) -> None:
    tokenizer, pad_id = load_tokenizer(minilm_dir, trust_remote_code=False)
    (batch,) = TextTokenizer(tokenizer, max_seq_len=16, pad_id=pad_id).encode([PAIRS])
    reference = AutoTokenizer.from_pretrained(minilm_dir)
    queries, passages = zip(*PAIRS, strict=True)
    expected = reference(list(queries), list(passages), padding=True, truncation="longest_first",
                         max_length=16, return_tensors="np")  # fmt: skip
    whole = reference(list(queries), list(passages))["input_ids"]
    np.testing.assert_array_equal(batch.input_ids, expected["input_ids"])
    np.testing.assert_array_equal(batch.attention_mask, expected["attention_mask"])
    np.testing.assert_array_equal(batch.token_type_ids, expected["token_type_ids"])
    assert batch.truncated[:, 0].tolist() == [len(ids) > 16 for ids in whole]
    assert batch.truncated[:, 0].any() and not batch.truncated[:, 0].all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 3000),
    st.integers(0, 3000),
    st.sampled_from(["word ", "naïve ", "天", "x" * 150]),
    st.sampled_from([31, 32]),  # odd and even budgets of pair tokens
)
@example(186, 180, "naïve ", 32)  # one side cut, the other exactly as long as the cut one
def test_a_pair_tokenized_by_prefixes_equals_the_whole_pair(
    minilm_dir: Path, left: int, right: int, unit: str, window: int
) -> None:
    tokenizer, _ = load_tokenizer(minilm_dir, trust_remote_code=False)
    tokenizer.enable_truncation(window)
    pair = ("query " + unit * (left // len(unit)), "text " + unit * (right // len(unit)))
    sides = side_tokenizer(tokenizer, window)
    (bounded,) = encode_pairs_within(tokenizer, sides, [pair], window)
    whole = tokenizer.encode(*pair)
    assert bounded.ids == whole.ids and bounded.type_ids == whole.type_ids
    assert bool(bounded.overflowing) == bool(whole.overflowing)


def test_offsets_and_special_tokens_mark_each_token(text_tokenizer: TextTokenizer) -> None:
    texts = ["Angela Merkel", "Paris is nice today"]
    (batch,) = text_tokenizer.encode([texts])
    assert batch.offsets is not None and batch.special_tokens_mask is not None
    for row, text in enumerate(texts):
        real = batch.special_tokens_mask[row] == 0
        spans = [text[start:end] for start, end in batch.offsets[row][real]]
        assert "".join(spans) == text.replace(" ", "")
    # [CLS] angela merkel [SEP], then padding: marked special like [CLS] and [SEP].
    width = batch.input_ids.shape[1]
    assert batch.special_tokens_mask[0].tolist() == [1, 0, 0, 0] + [1] * (width - 4)


@pytest.mark.parametrize(
    ("cores", "instances", "threads"), [(2, 2, 1), (16, 2, 8), (2, 4, 1), (8, 1, 8)]
)
def test_engine_instances_share_the_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, instances: int, threads: int
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    config = {"instance_group": [{"kind": "KIND_CPU", "count": instances}]}
    assert default_threads({"model_config": json.dumps(config)}) == threads
