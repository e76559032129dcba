"""`rerank` (cross-encoder): (QUERY, TEXT) pairs in, each pair's relevance SCORE out.

The graph returns the score sentence-transformers' `CrossEncoder.predict` returns: the one
logit through the checkpoint's activation (a sigmoid unless its config names another). Pairs
longer than the window are truncated longest text first, as `CrossEncoder` does, and flagged
in TRUNCATED.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tritonize.errors import TritonizeError
from tritonize.tasks.base import (
    TRUNCATED_OUTPUT,
    PublicTensor,
    TaskContract,
    register,
)
from tritonize.tasks.build import EncoderBuild, ExportHead, Reference, encode_for_graph
from tritonize.triton_models.common import QUERY, SCORE, TEXT

if TYPE_CHECKING:
    from tritonize.client import TritonizeClient
    from tritonize.spec import BuildSpec
    from tritonize.tasks.tolerances import GateTolerance

# Queries and passages whose scores a deployment is verified against: relevant and not, short
# and long, several scripts.
GOLDEN_PAIRS = (
    ("What does Triton serve?", "Triton serves transformer models over HTTP and gRPC."),
    ("What does Triton serve?", "Café, naïve, façade, jalapeño: accents survive."),
    ("value of pi", "3.14159 is pi; 2.71828 is e."),
    ("天气怎么样？", "今天天气很好，我们去公园散步吧。"),
    ("Wie spät ist es?", "Es ist kurz nach acht Uhr abends, die Sonne geht gerade unter."),
    ("rocket", "Emoji in text 🚀🔥 should tokenize without trouble. " * 40),
)


class RerankBuild(EncoderBuild):
    """Tokenizer (pairs) -> engine (the activated score): no step after it."""

    engine_output = SCORE
    gate_figure = "max score diff"
    needs_trained_head = True  # a made-up head ranks by chance
    pairs = True

    export_head = ExportHead(
        output_name="score", auto_class="AutoModelForSequenceClassification", head="PairScore",
        width=1,
    )  # fmt: skip

    def gate_compare(
        self, tolerance: GateTolerance, case: str, reference: np.ndarray, actual: np.ndarray
    ) -> tuple[list[str], float]:
        worst = float(np.abs(reference - actual).max())
        limit = tolerance.max_probability_diff
        return ([f"{case}: score diff {worst:.2e} > {limit}"] if worst > limit else []), worst

    def golden_reference(self, reference: Reference, spec: BuildSpec) -> dict[str, Any]:
        pairs = [list(pair) for pair in GOLDEN_PAIRS]
        feeds = encode_for_graph(reference, spec, list(GOLDEN_PAIRS))
        scores = reference.run_graph(feeds)[:, 0]
        texts = [text for _, text in GOLDEN_PAIRS]  # for `verify`'s smoke requests
        return {"texts": texts, "pairs": pairs, "scores": scores.round(7).tolist()}


@register
class Rerank(TaskContract):
    name = "rerank"
    inputs = (PublicTensor(QUERY, "BYTES", np.object_), PublicTensor(TEXT, "BYTES", np.object_))
    outputs = (PublicTensor(SCORE, "FP32", np.float32), TRUNCATED_OUTPUT)
    build = RerankBuild()

    def request(self, texts: list[str]) -> dict[str, list[str]]:
        """The first text is the query for every text (itself included)."""
        return {QUERY: [texts[0]] * len(texts), TEXT: texts}

    def response_problem(self, outputs: dict[str, np.ndarray]) -> str | None:
        return None  # shapes and finite values are all a score promises

    def golden_problems(
        self, client: TritonizeClient, model: str, golden: dict[str, Any]
    ) -> tuple[bool, str]:
        queries, texts = zip(*golden["pairs"], strict=True)
        try:
            served = client.infer_inputs(model, {QUERY: queries, TEXT: texts})[SCORE][:, 0]
        except TritonizeError as exc:
            return False, str(exc)
        diff = float(np.abs(served - np.asarray(golden["scores"])).max())
        limit = golden["tolerance"]["max_probability_diff"]
        return diff <= limit, f"max score diff {diff:.2e} (<= {limit})"

    def golden_requests(self, golden: dict[str, Any]) -> int:
        return 1  # every pair in one batch
