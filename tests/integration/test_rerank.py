"""Rerank served by a real tritonserver, over HTTP and gRPC: sentence-transformers' CrossEncoder
scores (pairs longer than the window truncated as it does, and flagged), `tritonize verify`
against the build's golden file, and bad pairs refused by name while the server keeps serving."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tritonize.client import TritonizeClient
from tritonize.errors import InferenceError
from tritonize.server import LocalServer

from .conftest import NEW_TASKS, TASKS_MAX_BATCH, TASKS_MAX_SEQ, run_verify

RERANKER = "reranker"
CHECKPOINT = NEW_TASKS[RERANKER][1]
SCORE_TOLERANCE = 1e-4
LONG_PAIR_SECONDS = 2.0  # a long single text takes 0.02 s

# Several scripts; short pairs, then pairs longer than the window: a long passage, a long query
# (the longest text is cut first, so here the query), and both long.
PAIRS = [
    ("What does Triton serve?", "Triton serves transformer models over HTTP and gRPC."),
    ("Wo liegt München?", "München ist die Hauptstadt Bayerns, im Süden Deutschlands."),
    ("¿Dónde vive José?", "José Pérez vive en Málaga, cerca del mar; ¿y tú?"),
    ("東京の天気は？", "今日は東京で雨が降っています。"),
    ("Где находится Москва?", "Москва — столица России, на реке Москве."),
    ("rockets", "Rockets 🚀 and fire 🔥 tokenize like any other text."),
    ("value of pi", "Pi is about 3.14159 and e is about 2.71828. " * 12),
    ("a question that goes on and on " * 12, "A short passage."),
    ("long query words " * 30, "Long passage words, in English and auf Deutsch. " * 20),
    ("Zoë?", "Ünïcödé àccénts: Zoë, Chloé, Noël, Søren Kierkegaard."),
    ("Cafe\u0301\t?", "Tabs\tand\nlines, zero\u200bwidth, 👩\u200d👩\u200d👧, ＡＢＣ ﬁnance ½."),
]


@cache
def cross_encoder(checkpoint: Path) -> CrossEncoder:
    return CrossEncoder(str(checkpoint), max_length=TASKS_MAX_SEQ)


def reference_scores(checkpoint: Path, pairs: list[tuple[str, str]]) -> np.ndarray:
    """sentence-transformers' own scores, its tokenizer cutting pairs at the same window."""
    return np.asarray(cross_encoder(checkpoint).predict(pairs), dtype=np.float64)


def pair_tokens(checkpoint: Path, query: str, text: str) -> int:
    """Tokens of the whole pair, special tokens included, before any truncation."""
    return len(own_tokenizer(checkpoint)(query, text, truncation=False)["input_ids"])


@cache
def own_tokenizer(checkpoint: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(checkpoint)


def served(client: TritonizeClient, pairs: list[tuple[str, str]]) -> tuple[np.ndarray, list]:
    """SCORE and TRUNCATED of every pair, sent in requests of at most the model's batch."""
    scores, truncated = [], []
    for first in range(0, len(pairs), TASKS_MAX_BATCH):
        queries, texts = zip(*pairs[first : first + TASKS_MAX_BATCH], strict=True)
        out = client.infer_inputs(RERANKER, {"QUERY": queries, "TEXT": texts})
        assert out["SCORE"].shape == out["TRUNCATED"].shape == (len(queries), 1)
        scores += out["SCORE"][:, 0].tolist()
        truncated += out["TRUNCATED"][:, 0].tolist()
    return np.asarray(scores), truncated


def test_scores_equal_the_cross_encoder(
    tasks_client: TritonizeClient, tiny_checkpoint: Callable[[str], Path]
) -> None:
    checkpoint = tiny_checkpoint(CHECKPOINT)
    scores, truncated = served(tasks_client, PAIRS)
    np.testing.assert_allclose(
        scores, reference_scores(checkpoint, PAIRS), atol=SCORE_TOLERANCE, rtol=0
    )
    too_long = [pair_tokens(checkpoint, q, t) > TASKS_MAX_SEQ for q, t in PAIRS]
    assert truncated == too_long
    assert 0 < sum(too_long) < len(PAIRS)  # both kinds are in the set
    assert np.ptp(scores) > 10 * SCORE_TOLERANCE  # the scores tell pairs apart


def test_a_pair_is_flagged_from_one_token_past_the_window(
    tasks_client: TritonizeClient, tiny_checkpoint: Callable[[str], Path]
) -> None:
    checkpoint = tiny_checkpoint(CHECKPOINT)
    # [CLS] query [SEP] word x n [SEP]: the window holds n = TASKS_MAX_SEQ - 4 words.
    pairs = [("query", "word " * words) for words in (TASKS_MAX_SEQ - 4, TASKS_MAX_SEQ - 3)]
    assert [pair_tokens(checkpoint, q, t) for q, t in pairs] == [TASKS_MAX_SEQ, TASKS_MAX_SEQ + 1]
    scores, truncated = served(tasks_client, pairs)
    assert truncated == [False, True]
    np.testing.assert_allclose(
        scores, reference_scores(checkpoint, pairs), atol=SCORE_TOLERANCE, rtol=0
    )


def test_rerank_scores_every_text_against_one_query(
    tasks_client: TritonizeClient, tiny_checkpoint: Callable[[str], Path]
) -> None:
    query = "Which city is the capital?"
    texts = ["Paris is the capital of France.", "Bananas are yellow.", "Berlin, Hauptstadt."]
    expected = reference_scores(tiny_checkpoint(CHECKPOINT), [(query, t) for t in texts])
    scores = tasks_client.rerank(RERANKER, query, texts)
    assert scores.shape == (len(texts),)
    np.testing.assert_allclose(scores, expected, atol=SCORE_TOLERANCE, rtol=0)


def test_pairs_batched_together_by_the_server_keep_their_own_scores(
    tasks_client: TritonizeClient, tiny_checkpoint: Callable[[str], Path]
) -> None:
    """One pair per request, sent at once: the batcher pads short pairs to long ones."""
    expected = reference_scores(tiny_checkpoint(CHECKPOINT), PAIRS)

    def one_pair(index: int) -> float:
        query, text = PAIRS[index % len(PAIRS)]
        with TritonizeClient(tasks_client.url, tasks_client.protocol) as client:
            return float(client.rerank(RERANKER, query, [text])[0])

    with ThreadPoolExecutor(8) as pool:
        scores = list(pool.map(one_pair, range(3 * len(PAIRS))))
    np.testing.assert_allclose(scores, np.tile(expected, 3), atol=SCORE_TOLERANCE, rtol=0)


# -- tritonize verify -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_verify_passes_against_the_build_golden_file(
    tasks_server: LocalServer, tasks_repository: Path, protocol: str
) -> None:
    result = run_verify(
        tasks_server, RERANKER, tasks_repository / RERANKER / "golden.json", protocol
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("readiness", "interface", "golden outputs", "smoke load", "metrics"):
        assert f"PASS  {check}" in result.stdout


def test_verify_fails_when_the_golden_scores_are_altered(
    tasks_server: LocalServer, tasks_repository: Path, tmp_path: Path
) -> None:
    golden = json.loads((tasks_repository / RERANKER / "golden.json").read_text())
    golden["scores"][0] += 0.01  # ten times the fp32 tolerance
    path = tmp_path / "golden.json"
    path.write_text(json.dumps(golden))
    result = run_verify(tasks_server, RERANKER, path, "http")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  golden outputs: max score diff 1.00e-02" in result.stdout
    assert "PASS  smoke load" in result.stdout


# -- bad pairs ------------------------------------------------------------------------------------


def assert_still_serving(client: TritonizeClient) -> None:
    scores = client.rerank(RERANKER, "still serving?", ["Yes, still serving."])
    assert scores.shape == (1,) and 0 <= scores[0] <= 1


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"QUERY": [""], "TEXT": ["a passage"]}, r"`QUERY`\[0\] is empty or whitespace only"),
        ({"QUERY": ["q", "q"], "TEXT": ["fine", ""]}, r"`TEXT`\[1\] is empty or whitespace only"),
        ({"QUERY": ["q"], "TEXT": [" \n\t "]}, r"`TEXT`\[0\] is empty or whitespace only"),
        ({"QUERY": ["\u200b\ufeff"], "TEXT": ["x"]}, r"`QUERY`\[0\] has no visible character"),
        ({"QUERY": [b"caf\xc3"], "TEXT": ["x"]}, r"`QUERY`\[0\] is not valid UTF-8 \(byte 3"),
        ({"QUERY": ["q"], "TEXT": [b"\xff\xfebad"]}, r"`TEXT`\[0\] is not valid UTF-8 \(byte 0"),
        ({"QUERY": ["q", "q"], "TEXT": ["x"]}, r"input 'QUERY' batch size does not match"),
        ({"QUERY": ["q"]}, r"missing required input\(s\) \['TEXT'\]"),
        (
            {"QUERY": ["q"] * (TASKS_MAX_BATCH + 1), "TEXT": ["x"] * (TASKS_MAX_BATCH + 1)},
            rf"batch-size must be <= {TASKS_MAX_BATCH}",
        ),
    ],
    ids=["empty-query", "empty-text", "whitespace-text", "invisible-query", "truncated-utf8",
         "invalid-utf8", "unequal-counts", "missing-text", "over-max-batch"],
)  # fmt: skip
def test_bad_pair_is_refused_by_name(
    tasks_client: TritonizeClient, inputs: dict[str, list], message: str
) -> None:
    """Refused as the client's mistake (HTTP 400, gRPC INVALID_ARGUMENT) with `message`."""
    with pytest.raises(InferenceError, match=message) as caught:
        tasks_client.infer_inputs(RERANKER, inputs)
    status = caught.value.__cause__.status()  # type: ignore[union-attr]
    assert status == ("400" if tasks_client.protocol == "http" else "StatusCode.INVALID_ARGUMENT")
    assert_still_serving(tasks_client)


def test_100kb_passage_is_truncated_and_flagged_not_refused(
    tasks_client: TritonizeClient, tiny_checkpoint: Callable[[str], Path]
) -> None:
    """The documented choice: a pair longer than the window is cut, longest text first."""
    pair = ("what is long?", ("A very long passage indeed. " * 4000)[:100_000])
    out = tasks_client.infer_inputs(RERANKER, {"QUERY": [pair[0]], "TEXT": [pair[1]]})
    assert out["TRUNCATED"].tolist() == [[True]]
    expected = reference_scores(tiny_checkpoint(CHECKPOINT), [pair])
    np.testing.assert_allclose(out["SCORE"][:, 0], expected, atol=SCORE_TOLERANCE, rtol=0)
    assert_still_serving(tasks_client)


def test_a_pair_of_two_long_texts_is_answered_at_once(
    tasks_server: LocalServer, tiny_checkpoint: Callable[[str], Path]
) -> None:
    """Both texts of an 84 KB pair far past the window: the answer may not wait on every way
    of cutting them (the reranker's one tokenizer instance serves every other pair too)."""
    query, text = "what is long? ", "A very long passage indeed. "  # 4 and 6 tokens
    with TritonizeClient(tasks_server.config.http_url) as client:
        started = time.perf_counter()
        out = client.infer_inputs(RERANKER, {"QUERY": [query * 2000], "TEXT": [text * 2000]})
        seconds = time.perf_counter() - started
    assert out["TRUNCATED"].tolist() == [[True]]
    # Longest-first truncation keeps a few dozen leading tokens of each text, and the text
    # stays the longer one: CrossEncoder gives the whole pair the score of these prefixes.
    expected = reference_scores(tiny_checkpoint(CHECKPOINT), [(query * 100, text * 100)])
    np.testing.assert_allclose(out["SCORE"][:, 0], expected, atol=SCORE_TOLERANCE, rtol=0)
    assert seconds < LONG_PAIR_SECONDS, f"an 84 KB pair took {seconds:.1f} s"


def test_server_still_serves_after_the_bad_pairs(
    tasks_client: TritonizeClient, tiny_checkpoint: Callable[[str], Path]
) -> None:
    pair = PAIRS[0]
    expected = reference_scores(tiny_checkpoint(CHECKPOINT), [pair])
    np.testing.assert_allclose(
        tasks_client.rerank(RERANKER, pair[0], [pair[1]]), expected, atol=SCORE_TOLERANCE, rtol=0
    )
