"""`question-answering` (extractive): one QUESTION and its CONTEXT per request; the ANSWER, its
SCORE and its START and END (character offsets into CONTEXT) out.

A context longer than the window is cut into overlapping windows (qa_windows.py documents the
stride); the engine scores every window as one batch and the best span over all windows wins
(qa_spans.py). Requests carry no batch dimension, since one context makes a batch of windows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tritonize.errors import TritonizeError
from tritonize.tasks.base import PublicTensor, TaskContract, register
from tritonize.tasks.build import EncoderBuild, ExportHead, Postprocess, Reference
from tritonize.triton_models.common import (
    ANSWER,
    ATTENTION_MASK,
    CONTEXT,
    END,
    INPUT_IDS,
    OFFSETS,
    QUESTION,
    SCORE,
    SPAN_LOGITS,
    START,
    TOKEN_TYPE_IDS,
    RequestError,
)
from tritonize.triton_models.qa_spans import DEFAULT_MAX_ANSWER_LEN, SpanFinder
from tritonize.triton_models.qa_windows import QuestionWindows

if TYPE_CHECKING:
    from tritonize.client import TritonizeClient
    from tritonize.spec import BuildSpec
    from tritonize.tasks.tolerances import GateTolerance

_TRITON = (
    "Triton Inference Server is open-source software that serves models from TensorRT, "
    "PyTorch and ONNX Runtime over HTTP and gRPC. It was released by NVIDIA in 2018. "
)
GOLDEN_QUESTIONS = (
    ("Who released Triton?", _TRITON),
    ("Wann wurde die Brücke eröffnet?", "Die Brücke wurde 1932 eröffnet und ist 500 Meter lang."),
    ("¿Dónde vive José?", "José vive en Madrid con su familia desde hace diez años."),
    ("谁发明了电话？", "贝尔在1876年发明了电话。"),
)
_FILLER = "Filler sentence number one. "  # six tokens or so


def golden_questions(max_seq_len: int) -> list[tuple[str, str]]:
    """The golden questions, and one whose context spans about three windows."""
    long = _FILLER * (max_seq_len // 3) + "The answer is in Lyon. " + _TRITON
    return [*GOLDEN_QUESTIONS, ("Where is the answer?", long)]


def stride(max_seq_len: int) -> int:
    """Context tokens two neighbouring windows share (fewer where a long question leaves less
    room: qa_windows.py)."""
    return min(128, max_seq_len // 4)


class QuestionAnsweringBuild(EncoderBuild):
    """Windows (no batch dimension) -> engine (start and end logits per token) -> best span."""

    engine_output = SPAN_LOGITS
    gate_figure = "max probability diff"
    needs_trained_head = True  # a made-up head points at random spans
    pairs = True
    batching = False
    tokenizer_module = "qa_windows"

    export_head = ExportHead(
        output_name="span_logits", auto_class="AutoModelForQuestionAnswering", head="SpanLogits",
        width=2, per_token=True,
    )  # fmt: skip

    def tokenizer_outputs(self, graph_inputs: tuple[str, ...]) -> list[PublicTensor]:
        """Windows x tokens (the step does not batch, so its dims hold the windows)."""
        ids = [
            PublicTensor(name, "INT64", np.int64, (-1, -1))
            for name in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)
        ]
        return [*ids, PublicTensor(OFFSETS, "INT64", np.int64, (-1, -1, 2))]

    def tokenizer_parameters(self, spec: BuildSpec) -> dict[str, object]:
        # The windows of one context reach the engine as one batch.
        return {"stride": stride(spec.max_seq_len), "max_windows": spec.max_batch_size}

    def labels(self, config: Any) -> list[str]:
        return []

    def postprocess(self, labels: list[str], spec: BuildSpec) -> Postprocess:
        return Postprocess(
            module="qa_spans",
            inputs=(
                PublicTensor(CONTEXT, "BYTES", np.object_),
                PublicTensor(SPAN_LOGITS, "FP32", np.float32, (-1, -1, 2)),
                PublicTensor(OFFSETS, "INT64", np.int64, (-1, -1, 2)),
            ),
            outputs=QuestionAnswering.outputs,
            parameters={"max_answer_len": DEFAULT_MAX_ANSWER_LEN},
        )

    def gate_compare(
        self, tolerance: GateTolerance, case: str, reference: np.ndarray, actual: np.ndarray
    ) -> tuple[list[str], float]:
        """Start and end distributions of every row (over all its tokens)."""
        expected, got = _softmax_tokens(reference), _softmax_tokens(actual)
        worst = float(np.abs(expected - got).max())
        misses = []
        if worst > tolerance.max_probability_diff:
            misses.append(f"{case}: start/end probability diff {worst:.2e} > "
                          f"{tolerance.max_probability_diff}")  # fmt: skip
        return misses, worst

    def golden_reference(self, reference: Reference, spec: BuildSpec) -> dict[str, Any]:
        windows = QuestionWindows(
            reference.own_tokenizer(), spec.max_seq_len, reference.pad_id,
            stride(spec.max_seq_len), spec.max_batch_size,
        )  # fmt: skip
        finder = SpanFinder()
        questions, answers = [], []
        for question, context in golden_questions(spec.max_seq_len):
            try:
                cut = windows.cut(question, context)
            except RequestError:  # more windows than the engine's batch: not for this build
                continue
            questions.append([question, context])
            logits = reference.run_graph(cut.tensors())
            found = finder.find(context, logits, cut.offsets)
            answers.append(
                {"answer": found.text, "score": found.score, "start": found.start,
                 "end": found.end}
            )  # fmt: skip
        # `verify`'s smoke load makes its requests of `texts` (see `request`): the questions,
        # well inside half the window.
        texts = [question for question, _ in questions]
        return {"questions": questions, "answers": answers, "texts": texts}


def _softmax_tokens(logits: np.ndarray) -> np.ndarray:
    """Softmax over the token axis of [rows, tokens, 2] logits, in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@register
class QuestionAnswering(TaskContract):
    name = "question-answering"
    inputs = (
        PublicTensor(QUESTION, "BYTES", np.object_),
        PublicTensor(CONTEXT, "BYTES", np.object_),
    )
    outputs = (
        PublicTensor(ANSWER, "BYTES", np.object_),
        PublicTensor(SCORE, "FP32", np.float32),
        PublicTensor(START, "INT64", np.int64),
        PublicTensor(END, "INT64", np.int64),
    )
    build = QuestionAnsweringBuild()

    def request(self, texts: list[str]) -> dict[str, list[str]]:
        """The first words of the first text ask about all of them (a question well inside
        half the window)."""
        question = " ".join(texts[0].split()[:8])
        return {QUESTION: [question], CONTEXT: [" ".join(texts)]}

    def response_problem(self, outputs: dict[str, np.ndarray]) -> str | None:
        start, end = int(outputs[START][0]), int(outputs[END][0])
        answer = outputs[ANSWER][0].decode()
        if not 0 <= start < end or len(answer) != end - start:
            return (
                f"`{ANSWER}` {answer!r} is not the context's text at {START}:{END} = {start}:{end}"
            )
        if not 0 <= float(outputs[SCORE][0]) <= 1:
            return f"`{SCORE}` {float(outputs[SCORE][0])} is not a probability"
        return None

    def golden_problems(
        self, client: TritonizeClient, model: str, golden: dict[str, Any]
    ) -> tuple[bool, str]:
        limit = golden["tolerance"]["max_probability_diff"]
        worst, misses = 0.0, []
        for (question, context), expected in zip(golden["questions"], golden["answers"],
                                                 strict=True):  # fmt: skip
            try:
                found = client.answer(model, question, context)
            except TritonizeError as exc:
                return False, str(exc)
            if (found.text, found.start, found.end) != (
                expected["answer"],
                expected["start"],
                expected["end"],
            ):
                misses.append(
                    f"{question!r}: served {found.text!r}, PyTorch {expected['answer']!r}"
                )
            worst = max(worst, abs(found.score - expected["score"]))
        count = len(golden["answers"])
        detail = f"{count - len(misses)}/{count} answers match, max score diff {worst:.2e}"
        passed = not misses and worst <= limit
        return passed, detail + (f"; first miss: {misses[0]}" if misses else "")

    def golden_requests(self, golden: dict[str, Any]) -> int:
        return len(golden["questions"])  # one question per request
