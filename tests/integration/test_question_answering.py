"""Extractive question answering served by a real tritonserver, over HTTP and gRPC: the answers
of the checkpoint in PyTorch, `tritonize verify` against the build's golden file, and refusals
that name the tensor while the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    BatchEncoding,
    PreTrainedTokenizerBase,
)
from tritonclient.utils import InferenceServerException

from tritonize.client import Answer, TritonizeClient
from tritonize.errors import InferenceError
from tritonize.server import LocalServer

from .conftest import NEW_TASKS, TASKS_MAX_BATCH, TASKS_MAX_SEQ, run_verify

QA = "qa"
STRIDE = min(128, TASKS_MAX_SEQ // 4)  # what the build sets: context tokens windows share
MAX_ANSWER_LEN = 15  # tokens, the postprocess step's default

SHORT_CASES = {
    "english": ("Where does the river flow?", "The river flows north through the old town."),
    "german": (
        "Wann wurde die Brücke gebaut?",
        "Die Brücke über den Fluss wurde im Jahr 1887 gebaut und 1990 erneuert.",
    ),
    "french": (
        "Où se trouve la bibliothèque ?",
        "La bibliothèque municipale se trouve à côté de l'église, près du marché élégant.",
    ),
    "spanish": ("¿Dónde vive José?", "José vive en Madrid con su familia desde hace diez años."),
    "chinese": ("长城有多长？", "长城是中国古代的军事防御工程，全长超过两万公里，横跨多个省份。"),
    "russian": ("Где находится музей?", "Музей находится в центре города, рядом с площадью."),
    "greek": ("Πού είναι το λιμάνι;", "Το παλιό λιμάνι βρίσκεται στο νότιο άκρο της πόλης."),
}
# Sentences repeated into contexts of several windows (the test checks how many), each
# within the build's 8 (Russian takes about 54 WordPiece tokens a sentence, English 18).
_LONG_SENTENCES = {
    "english": ("In {n}, the harbour of the northern town received ships carrying wool.", 12),
    "french": ("En {n}, le château élevé près de la forêt accueillit des marchés animés.", 8),
    "chinese": ("在{n}年，这座城市修建了新的图书馆和一座横跨河流的石桥。", 8),
    "russian": ("В {n} году в городе построили новую школу и широкий мост через реку.", 4),
}
LONG_CASES = {
    f"long-{language}": (
        SHORT_CASES[language][0],
        " ".join(sentence.format(n=1800 + i) for i in range(count)),
    )
    for language, (sentence, count) in _LONG_SENTENCES.items()
}
CASES = SHORT_CASES | LONG_CASES


@dataclass(frozen=True)
class Reference:
    """The checkpoint in PyTorch and transformers' tokenizer: the answers the server must give."""

    tokenizer: PreTrainedTokenizerBase
    model: torch.nn.Module

    def windows(self, question: str, context: str) -> BatchEncoding:
        return self.tokenizer(
            question, context, truncation="only_second", max_length=TASKS_MAX_SEQ,
            stride=STRIDE, return_overflowing_tokens=True, return_offsets_mapping=True,
            padding="longest", return_tensors="pt",
        )  # fmt: skip

    def answer(self, question: str, context: str) -> tuple[Answer, int]:
        """The best span (softmax over each window's context tokens, start <= end, at most
        MAX_ANSWER_LEN tokens, highest p_start * p_end, the earliest on ties) and the number
        of windows."""
        encoding = self.windows(question, context)
        with torch.no_grad():
            output = self.model(
                input_ids=encoding["input_ids"],
                attention_mask=encoding["attention_mask"],
                token_type_ids=encoding["token_type_ids"],
            )
        best: tuple[float, int, int] | None = None  # score, start char, end char
        windows = len(encoding["input_ids"])
        for window in range(windows):
            tokens = [t for t, s in enumerate(encoding.sequence_ids(window)) if s == 1]
            p_start = torch.softmax(output.start_logits[window, tokens].double(), dim=0)
            p_end = torch.softmax(output.end_logits[window, tokens].double(), dim=0)
            offsets = encoding["offset_mapping"][window]
            for i, first in enumerate(tokens):
                for j, last in enumerate(tokens[i : i + MAX_ANSWER_LEN], start=i):
                    score = float(p_start[i] * p_end[j])
                    if best is None or score > best[0]:
                        best = (score, int(offsets[first][0]), int(offsets[last][1]))
        assert best is not None
        score, start, end = best
        return Answer(context[start:end], score, start, end), windows


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Callable[[str], Path]) -> Reference:
    directory = tiny_checkpoint(NEW_TASKS[QA][1])
    model = AutoModelForQuestionAnswering.from_pretrained(directory).eval()
    return Reference(AutoTokenizer.from_pretrained(directory), model)


@pytest.mark.parametrize("case", list(CASES))
def test_answers_match_pytorch(tasks_client: TritonizeClient, reference: Reference, case: str):
    question, context = CASES[case]
    served = tasks_client.answer(QA, question, context)
    expected, windows = reference.answer(question, context)
    assert (served.text, served.start, served.end) == (expected.text, expected.start, expected.end)
    assert served.score == pytest.approx(expected.score, abs=1e-4)
    assert served.text and served.text == context[served.start : served.end]
    if case.startswith("long-"):
        assert 3 <= windows <= TASKS_MAX_BATCH


def test_concurrent_requests_get_their_own_answers(
    tasks_server: LocalServer, reference: Reference
) -> None:
    """Contexts of one to eight windows at once: the engine's dynamic batcher merges the
    windows of different requests, and each request still gets the answer to its question."""
    config = tasks_server.config

    def ask(case: str) -> Answer:
        with TritonizeClient(config.http_url, "http", api_key=config.api_key) as client:
            return client.answer(QA, *CASES[case])

    cases = list(CASES) * 3
    with ThreadPoolExecutor(max_workers=8) as pool:
        served = list(pool.map(ask, cases))
    expected = {case: reference.answer(*CASES[case])[0] for case in CASES}
    for case, answer in zip(cases, served, strict=True):
        assert (answer.text, answer.start, answer.end) == (
            expected[case].text, expected[case].start, expected[case].end,
        ), case  # fmt: skip
        assert answer.score == pytest.approx(expected[case].score, abs=1e-4), case


# -- tritonize verify --------------------------------------------------------------------------
def golden_of(server: LocalServer) -> dict:
    return json.loads((server.config.repository / QA / "golden.json").read_text())


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_verify_passes(tasks_server: LocalServer, protocol: str) -> None:
    golden = tasks_server.config.repository / QA / "golden.json"
    count = len(golden_of(tasks_server)["answers"])
    assert count == 5  # four short questions and one of several windows
    result = run_verify(tasks_server, QA, golden, protocol)
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("readiness", "interface", "golden outputs", "smoke load", "metrics"):
        assert f"PASS  {check}" in result.stdout
    assert f"PASS  golden outputs: {count}/{count} answers match" in result.stdout


def test_verify_fails_on_an_altered_answer(tasks_server: LocalServer, tmp_path: Path) -> None:
    golden = golden_of(tasks_server)
    question = golden["questions"][1][0]
    golden["answers"][1]["start"] += 1
    path = tmp_path / "golden.json"
    path.write_text(json.dumps(golden))
    result = run_verify(tasks_server, QA, path, "http")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  golden outputs: 4/5 answers match" in result.stdout
    assert f"first miss: {question!r}: served" in result.stdout
    assert "PASS  smoke load" in result.stdout


def test_verify_fails_on_an_altered_score(tasks_server: LocalServer, tmp_path: Path) -> None:
    golden = golden_of(tasks_server)
    golden["answers"][0]["score"] += 0.01  # far over the tolerance, same span
    path = tmp_path / "golden.json"
    path.write_text(json.dumps(golden))
    result = run_verify(tasks_server, QA, path, "grpc")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  golden outputs: 5/5 answers match, max score diff 1.00e-02" in result.stdout


# -- requests refused, and the server serving on -----------------------------------------------
GOOD = ("Where does the river flow?", "The river flows north through the old town.")
HALF_WINDOW = TASKS_MAX_SEQ // 2
BAD_REQUESTS: dict[str, tuple[str | bytes, str | bytes, str]] = {
    "empty-question": ("", GOOD[1], r"`QUESTION` is empty or whitespace only: expected some text"),
    "whitespace-context": (GOOD[0], " \t\n\u3000 ", r"`CONTEXT` is empty or whitespace only"),
    "invisible-question": ("\u200b\ufeff", GOOD[1], r"`QUESTION` has no visible character"),
    "long-question": (
        "why " * (HALF_WINDOW + 1), GOOD[1],
        rf"`QUESTION` is {HALF_WINDOW + 1} tokens: at most {HALF_WINDOW} allowed \(half of the "
        rf"{TASKS_MAX_SEQ}-token window\)",
    ),
    "invalid-utf8-question": (b"ok\xff", GOOD[1], r"`QUESTION` is not valid UTF-8 \(byte 2"),
    "invalid-utf8-context": (GOOD[0], b"caf\xc3", r"`CONTEXT` is not valid UTF-8 \(byte 3"),
}  # fmt: skip


def assert_refused(
    client: TritonizeClient, question: str | bytes, context: str | bytes, message: str
) -> None:
    """Refused as the client's mistake (HTTP 400, gRPC INVALID_ARGUMENT) with `message`; the
    next good request is answered."""
    with pytest.raises(InferenceError, match=message) as caught:
        client.infer_inputs(QA, {"QUESTION": [question], "CONTEXT": [context]})
    cause = caught.value.__cause__
    assert isinstance(cause, InferenceServerException)
    status = cause.status()
    assert status == ("400" if client.protocol == "http" else "StatusCode.INVALID_ARGUMENT")
    assert_serving(client)


def assert_serving(client: TritonizeClient) -> None:
    answer = client.answer(QA, *GOOD)
    assert answer.text and answer.text == GOOD[1][answer.start : answer.end]


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_are_refused_by_name(tasks_client: TritonizeClient, case: str) -> None:
    assert_refused(tasks_client, *BAD_REQUESTS[case])


def test_a_context_over_the_windows_of_a_batch_is_refused(
    tasks_client: TritonizeClient, reference: Reference
) -> None:
    question, context = "Where?", " ".join(f"word{i}" for i in range(200))
    needed = len(reference.windows(question, context)["input_ids"])
    tokens = len(reference.tokenizer(context, add_special_tokens=False)["input_ids"])
    room = len(reference.tokenizer(question, context)["input_ids"]) - tokens
    assert needed > TASKS_MAX_BATCH
    assert_refused(
        tasks_client, question, context,
        rf"`CONTEXT` is {tokens} tokens: it needs {needed} windows of {TASKS_MAX_SEQ - room} "
        rf"context tokens \(sharing {STRIDE}\), at most {TASKS_MAX_BATCH} allowed",
    )  # fmt: skip


def test_a_context_without_the_answer_still_gets_its_best_span(
    tasks_client: TritonizeClient,
) -> None:
    """Not an error (extractive QA always points at a span): a span of the context comes back."""
    context = "The weather was mild all week and the market was busy on Sunday."
    answer = tasks_client.answer(QA, "What is the capital of Peru?", context)
    assert 0 <= answer.start < answer.end <= len(context)
    assert answer.text == context[answer.start : answer.end]
    assert 0 < answer.score <= 1


def test_the_server_still_serves_after_the_bad_requests(tasks_client: TritonizeClient) -> None:
    assert tasks_client.is_model_ready(QA)
    assert_serving(tasks_client)
