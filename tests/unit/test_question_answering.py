"""Extractive question answering: windows -> PyTorch model -> spans, against transformers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    BatchEncoding,
    PreTrainedTokenizerBase,
)

from tritonize.triton_models.common import RequestError
from tritonize.triton_models.qa_spans import Answer, SpanFinder
from tritonize.triton_models.qa_windows import QuestionWindows, Windows

MAX_SEQ_LEN = 64
STRIDE = 16
MAX_ANSWER_LEN = 15

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
    "spanish": (
        "¿Cuántos habitantes tiene la ciudad?",
        "La ciudad tiene unos ochenta mil habitantes y un puerto pequeño en el río.",
    ),
    "chinese": ("长城有多长？", "长城是中国古代的军事防御工程，全长超过两万公里，横跨多个省份。"),
    "russian": (
        "Где находится музей?",
        "Музей находится в центре города, рядом с большой площадью.",
    ),
}

_LONG_SENTENCES = {
    "english": "In {n}, the harbour of the northern town received ships carrying wool and salt.",
    "french": "En {n}, le château élevé près de la forêt accueillit des marchés très animés.",
    "chinese": "在{n}年，这座城市修建了新的图书馆和一座横跨河流的石桥。",
    "russian": "В {n} году в городе построили новую школу и широкий мост через реку.",
}
LONG_CASES = {
    f"long-{language}": (
        SHORT_CASES[language][0],
        " ".join(sentence.format(n=1800 + i) for i in range(12)),
    )
    for language, sentence in _LONG_SENTENCES.items()
}


@dataclass(frozen=True)
class QAModel:
    directory: Path
    model: torch.nn.Module
    reference_tokenizer: PreTrainedTokenizerBase  # transformers' fast tokenizer

    def windows(self, **limits: int) -> QuestionWindows:
        settings = {"max_seq_len": MAX_SEQ_LEN, "stride": STRIDE, "max_windows": 64} | limits
        return QuestionWindows.from_file(
            self.directory / "tokenizer.json",
            pad_id=self.reference_tokenizer.pad_token_id,
            **settings,
        )


@pytest.fixture(scope="module", params=["bert-qa", "xlm-roberta-qa"])
def qa_model(request: pytest.FixtureRequest, tiny_checkpoint: Callable[[str], Path]) -> QAModel:
    directory = tiny_checkpoint(request.param)
    model = AutoModelForQuestionAnswering.from_pretrained(directory).eval()
    return QAModel(directory, model, AutoTokenizer.from_pretrained(directory))


@pytest.fixture(scope="module")
def bert_windows(tiny_checkpoint: Callable[[str], Path]) -> QuestionWindows:
    directory = tiny_checkpoint("bert-qa")
    return QuestionWindows.from_file(
        directory / "tokenizer.json",
        max_seq_len=MAX_SEQ_LEN,
        pad_id=0,
        stride=STRIDE,
        max_windows=3,
        max_text_bytes=2000,
    )


def as_tensor(text: str | bytes) -> np.ndarray:
    return np.array([text.encode() if isinstance(text, str) else text], dtype=object)


def span_logits(model: torch.nn.Module, windows: Windows) -> np.ndarray:
    """The model's start and end logits for the served windows, as the engine returns them."""
    with torch.no_grad():
        output = model(
            input_ids=torch.from_numpy(windows.input_ids),
            attention_mask=torch.from_numpy(windows.attention_mask),
            token_type_ids=torch.from_numpy(windows.token_type_ids),
        )
    return torch.stack([output.start_logits, output.end_logits], dim=-1).numpy()


def serve(qa: QAModel, question: str, context: str) -> tuple[Windows, Answer]:
    windows = qa.windows().prepare(as_tensor(question), as_tensor(context))
    logits = span_logits(qa.model, windows)
    answer = SpanFinder(MAX_ANSWER_LEN).answer(as_tensor(context), logits, windows.offsets)
    return windows, answer


def reference_encoding(
    qa: QAModel, question: str, context: str, stride: int = STRIDE
) -> BatchEncoding:
    return qa.reference_tokenizer(
        question,
        context,
        truncation="only_second",
        max_length=MAX_SEQ_LEN,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="longest",
        return_tensors="pt",
    )


def reference_answer(qa: QAModel, question: str, context: str) -> Answer:
    """The span rule, spelled out token pair by token pair over transformers' windows."""
    encoding = reference_encoding(qa, question, context)
    with torch.no_grad():
        output = qa.model(
            input_ids=encoding["input_ids"],
            attention_mask=encoding["attention_mask"],
            token_type_ids=encoding["token_type_ids"],
        )
    best: tuple[float, int, int] | None = None  # score, start char, end char
    for window in range(len(encoding["input_ids"])):
        tokens = [t for t, s in enumerate(encoding.sequence_ids(window)) if s == 1]
        p_start = torch.softmax(output.start_logits[window, tokens].double(), dim=0)
        p_end = torch.softmax(output.end_logits[window, tokens].double(), dim=0)
        offsets = encoding["offset_mapping"][window]
        for i, first in enumerate(tokens):
            for j, last in enumerate(tokens):
                if not 0 <= last - first < MAX_ANSWER_LEN:
                    continue
                score = float(p_start[i] * p_end[j])
                if best is None or score > best[0]:
                    best = (score, int(offsets[first][0]), int(offsets[last][1]))
    assert best is not None
    score, start, end = best
    return Answer(context[start:end], score, start, end)


@pytest.mark.parametrize("case", [*SHORT_CASES, *LONG_CASES])
def test_answers_match_transformers(qa_model: QAModel, case: str) -> None:
    question, context = {**SHORT_CASES, **LONG_CASES}[case]
    windows, answer = serve(qa_model, question, context)
    expected = reference_answer(qa_model, question, context)
    assert (answer.text, answer.start, answer.end) == (expected.text, expected.start, expected.end)
    assert answer.score == pytest.approx(expected.score, abs=1e-5)
    assert answer.text == context[answer.start : answer.end] and answer.text
    if case.startswith("long-"):
        assert len(windows.input_ids) >= 3


@pytest.mark.parametrize("case", ["french", "chinese", "long-english", "long-russian"])
def test_windows_match_transformers(qa_model: QAModel, case: str) -> None:
    question, context = {**SHORT_CASES, **LONG_CASES}[case]
    windows = qa_model.windows().prepare(as_tensor(question), as_tensor(context))
    expected = reference_encoding(qa_model, question, context)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(getattr(windows, name), expected[name].numpy(), err_msg=name)
    in_context = np.array(
        [[s == 1 for s in expected.sequence_ids(w)] for w in range(len(expected["input_ids"]))]
    )
    reference_offsets = expected["offset_mapping"].numpy()
    np.testing.assert_array_equal(windows.offsets[in_context], reference_offsets[in_context])
    assert (windows.offsets[~in_context] == -1).all()


def test_a_long_question_shrinks_the_stride(qa_model: QAModel) -> None:
    """30 question tokens leave 31 of 64 for the context: the stride drops to 31 // 2 = 15."""
    question = " ".join(["where"] * 30)
    context = LONG_CASES["long-english"][1]
    windows = qa_model.windows().prepare(as_tensor(question), as_tensor(context))
    expected = reference_encoding(qa_model, question, context, stride=15)
    assert windows.stride == 15
    np.testing.assert_array_equal(windows.input_ids, expected["input_ids"].numpy())


def test_padding_after_the_windows_is_ignored(qa_model: QAModel) -> None:
    """An engine may return logits padded past the windows' length; that padding never wins."""
    question, context = LONG_CASES["long-french"]
    windows, answer = serve(qa_model, question, context)
    logits = span_logits(qa_model.model, windows)
    padded = np.concatenate([logits, np.full((len(logits), 8, 2), 1e4, np.float32)], axis=1)
    again = SpanFinder(MAX_ANSWER_LEN).answer(as_tensor(context), padded, windows.offsets)
    assert again == answer


def spans_of(offsets: list[list[tuple[int, int]]]) -> np.ndarray:
    return np.array(offsets, dtype=np.int64)


OUT = (-1, -1)


def test_only_context_tokens_share_the_softmax() -> None:
    """A huge logit on a question token takes no probability away from the context's tokens."""
    offsets = spans_of([[OUT, (0, 3), (4, 9), OUT]])
    logits = np.zeros((1, 4, 2), np.float32)
    logits[0, 0] = 50.0  # the question or [CLS] token
    logits[0, 1, 0], logits[0, 2, 1] = 2.0, 1.0
    answer = SpanFinder().find("big house", logits, offsets)
    p_start = np.exp(2.0) / (np.exp(2.0) + 1)
    p_end = np.exp(1.0) / (np.exp(1.0) + 1)
    assert (answer.text, answer.start, answer.end) == ("big house", 0, 9)
    assert answer.score == pytest.approx(p_start * p_end, rel=1e-12)


def test_spans_longer_than_max_answer_len_are_skipped() -> None:
    offsets = spans_of([[(0, 1), (2, 3), (4, 5)]])
    logits = np.array([[[5.0, 0.0], [0.0, 0.0], [0.0, 5.0]]], np.float32)
    assert SpanFinder(3).find("a b c", logits, offsets).text == "a b c"
    assert SpanFinder(2).find("a b c", logits, offsets).text in {"a", "c", "a b", "b c"}
    assert SpanFinder(1).find("a b c", logits, offsets).text in {"a", "c"}


def test_ties_go_to_the_earliest_window_then_the_earliest_start() -> None:
    offsets = spans_of([[(4, 5), (6, 7)], [(0, 1), (2, 3)]])
    logits = np.zeros((2, 2, 2), np.float32)
    answer = SpanFinder().find("a b c d", logits, offsets)
    assert (answer.start, answer.end, answer.score) == (4, 5, pytest.approx(0.25))


def refused_by_windows(windows: QuestionWindows, question: object, context: object) -> str:
    with pytest.raises(RequestError) as caught:
        windows.prepare(np.asarray(question, dtype=object), np.asarray(context, dtype=object))
    return str(caught.value)


GOOD = [b"What is it?"]
BAD_TEXTS = [
    (b"ok\xff", "is not valid UTF-8 (byte 2: invalid start byte)"),
    (b"x" * 2001, "is 2001 bytes: at most 2000 allowed"),
    (b"", "is empty or whitespace only: expected some text"),
    (b" \t\n", "is empty or whitespace only: expected some text"),
    ("\u200b\ufeff".encode(), "has no visible character"),
    ("\ue000".encode(), "yields no token: this model's tokenizer removes all of it"),
]


@pytest.mark.parametrize(("raw", "problem"), BAD_TEXTS)
def test_bad_questions_are_refused(bert_windows: QuestionWindows, raw: bytes, problem: str) -> None:
    assert refused_by_windows(bert_windows, [raw], GOOD).startswith(f"`QUESTION` {problem}")


@pytest.mark.parametrize(("raw", "problem"), BAD_TEXTS)
def test_bad_contexts_are_refused(bert_windows: QuestionWindows, raw: bytes, problem: str) -> None:
    assert refused_by_windows(bert_windows, GOOD, [raw]).startswith(f"`CONTEXT` {problem}")


@pytest.mark.parametrize("shape", [(2,), (1, 1), (0,)])
def test_tensors_of_other_shapes_are_refused(bert_windows: QuestionWindows, shape: tuple) -> None:
    texts = np.full(shape, b"text", dtype=object)
    assert refused_by_windows(bert_windows, texts, GOOD) == (
        f"`QUESTION` has shape {list(shape)}: expected [1] (one text)"
    )
    assert refused_by_windows(bert_windows, GOOD, texts).startswith("`CONTEXT` has shape")


def test_a_question_over_half_the_window_is_refused(bert_windows: QuestionWindows) -> None:
    message = refused_by_windows(bert_windows, [b"why " * 33], GOOD)
    assert message == "`QUESTION` is 33 tokens: at most 32 allowed (half of the 64-token window)"
    bert_windows.prepare(as_tensor("why " * 32), as_tensor("because"))  # 32 is allowed


def test_a_context_over_max_windows_is_refused(
    bert_windows: QuestionWindows, tiny_checkpoint: Callable[[str], Path]
) -> None:
    question, context = "Where?", " ".join(f"word{i}" for i in range(150))
    reference = AutoTokenizer.from_pretrained(tiny_checkpoint("bert-qa"))
    needed = len(
        reference(question, context, truncation="only_second", max_length=MAX_SEQ_LEN,
                  stride=STRIDE, return_overflowing_tokens=True)["input_ids"]
    )  # fmt: skip
    context_tokens = len(reference(context, add_special_tokens=False)["input_ids"])
    assert needed > 3
    message = refused_by_windows(bert_windows, [question.encode()], [context.encode()])
    assert message == (
        f"`CONTEXT` is {context_tokens} tokens: it needs {needed} windows of 59 context tokens "
        f"(sharing {STRIDE}), at most 3 allowed"
    )


def good_postprocess_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    context = as_tensor("a b")
    return context, np.zeros((2, 3, 2), np.float32), spans_of([[OUT, (0, 1), (2, 3)]] * 2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"logits": np.zeros((2, 3), np.float32)},
         r"`span_logits` has shape \[2, 3\]: expected \[2, 3 or more, 2\]"),
        ({"logits": np.zeros((1, 3, 2), np.float32)},
         r"`span_logits` has shape \[1, 3, 2\]: expected \[2, 3 or more, 2\]"),
        ({"logits": np.zeros((2, 2, 2), np.float32)},
         r"`span_logits` has shape \[2, 2, 2\]: expected \[2, 3 or more, 2\]"),
        ({"logits": np.full((2, 3, 2), np.nan, np.float32)},
         r"`span_logits` holds NaN or infinite values"),
        ({"offsets": np.zeros((2, 3), np.int64)},
         r"`offsets` has shape \[2, 3\]: expected \[windows, tokens, 2\]"),
        ({"offsets": spans_of([[OUT, (0, 1), (2, 4)]] * 2)},
         r"`offsets` holds a span outside the 3-character context"),
        ({"offsets": spans_of([[OUT, (1, 0), (2, 3)]] * 2)},
         r"`offsets` holds a span outside the 3-character context"),
        ({"offsets": spans_of([[OUT, OUT, OUT]] * 2)},
         r"`offsets` marks no context token: expected at least one"),
        ({"context": as_tensor(b"a\xffb")}, r"`CONTEXT` is not valid UTF-8"),
        ({"context": np.array([b"a b", b"c"], dtype=object)}, r"`CONTEXT` has shape \[2\]"),
    ],
    ids=["rank", "windows", "short", "nan", "offsets-rank", "past-end", "reversed", "no-context",
         "utf8", "context-shape"],
)  # fmt: skip
def test_postprocess_refuses_bad_tensors(change: dict, message: str) -> None:
    context, logits, offsets = good_postprocess_inputs()
    inputs = {"context": context, "logits": logits, "offsets": offsets} | change
    with pytest.raises(RequestError, match=message):
        SpanFinder().answer(inputs["context"], inputs["logits"], inputs["offsets"])
