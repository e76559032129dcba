"""`token-classification` (named entities): TEXT in, each text's ENTITIES out.

ENTITIES is one UTF-8 JSON string per text (BYTES [B, 1]): a list of
{"text", "label", "score", "start", "end"} in order of `start`, grouped from the tokens' labels
as transformers' token-classification pipeline does with `aggregation_strategy="simple"`;
`start` and `end` are character offsets, and "text" is TEXT[start:end].
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from tritonize.errors import TritonizeError
from tritonize.tasks.base import (
    TEXT_INPUT,
    TRUNCATED_OUTPUT,
    PublicTensor,
    TaskContract,
    register,
)
from tritonize.tasks.build import (
    EncoderBuild,
    ExportHead,
    Postprocess,
    Reference,
    config_labels,
    encode_for_graph,
)
from tritonize.triton_models.common import (
    ENTITIES,
    LOGITS,
    OFFSETS,
    SPECIAL_TOKENS_MASK,
    TEXT,
)
from tritonize.triton_models.entities import EntityExtractor, softmax

if TYPE_CHECKING:
    from tritonize.client import TritonizeClient
    from tritonize.spec import BuildSpec
    from tritonize.tasks.tolerances import GateTolerance

ENTITY_KEYS = {"text", "label", "score", "start", "end"}

GOLDEN_TEXTS = (
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday.",
    "Apple Inc. opened a new office in Zürich, Switzerland.",
    "Hugging Face and NVIDIA both work on Triton Inference Server.",
    "José García vive en Madrid y trabaja para Telefónica.",
    "北京大学位于中国北京。",
    "Владимир живёт в Москве.",
    "no entity here, just words and 42 numbers 🚀",
)


class TokenClassificationBuild(EncoderBuild):
    """Tokenizer (with offsets) -> engine (per-token logits) -> entities."""

    engine_output = LOGITS
    gate_figure = "max probability diff"
    needs_trained_head = True  # a made-up head tags at random
    tokenizer_extras = (OFFSETS, SPECIAL_TOKENS_MASK)

    export_head = ExportHead(
        output_name="logits", auto_class="AutoModelForTokenClassification",
        head="SequenceLogits", width_field="num_labels", per_token=True,
    )  # fmt: skip

    def labels(self, config: Any) -> list[str]:
        return config_labels(config)

    def postprocess(self, labels: list[str], spec: BuildSpec) -> Postprocess:
        return Postprocess(
            module="entities",
            inputs=(
                PublicTensor(TEXT, "BYTES", np.object_),
                PublicTensor(LOGITS, "FP32", np.float32, (-1, len(labels))),
                PublicTensor(OFFSETS, "INT64", np.int64, (-1, 2)),
                PublicTensor(SPECIAL_TOKENS_MASK, "INT64", np.int64, (-1,)),
            ),
            outputs=(TokenClassification.outputs[0],),
            parameters={"labels": json.dumps(labels)},
        )

    def gate_compare(
        self, tolerance: GateTolerance, case: str, reference: np.ndarray, actual: np.ndarray
    ) -> tuple[list[str], float]:
        expected, got = softmax(reference), softmax(actual)
        worst = float(np.abs(expected - got).max())
        flips = np.argwhere(expected.argmax(-1) != got.argmax(-1))
        misses = [f"{case}: row {r} token {t} changes its label" for r, t in flips[:5]]
        if worst > tolerance.max_probability_diff:
            misses.append(
                f"{case}: probability diff {worst:.2e} > {tolerance.max_probability_diff}"
            )
        return misses, worst

    def golden_reference(self, reference: Reference, spec: BuildSpec) -> dict[str, Any]:
        texts = list(GOLDEN_TEXTS)
        feeds = encode_for_graph(reference, spec, texts)
        logits = reference.run_graph(feeds)
        extractor = EntityExtractor(reference.labels)
        entities = extractor.extract(texts, logits, feeds[OFFSETS], feeds[SPECIAL_TOKENS_MASK])
        return {"texts": texts, "entities": entities}


@register
class TokenClassification(TaskContract):
    name = "token-classification"
    inputs = (TEXT_INPUT,)
    outputs = (PublicTensor(ENTITIES, "BYTES", np.object_), TRUNCATED_OUTPUT)
    build = TokenClassificationBuild()

    def request(self, texts: list[str]) -> dict[str, list[str]]:
        return {TEXT: texts}

    def response_problem(self, outputs: dict[str, np.ndarray]) -> str | None:
        for row, item in enumerate(outputs[ENTITIES][:, 0]):
            problem = _entities_problem(item)
            if problem:
                return f"output `{ENTITIES}`[{row}] {problem}"
        return None

    def golden_problems(
        self, client: TritonizeClient, model: str, golden: dict[str, Any]
    ) -> tuple[bool, str]:
        try:
            served = client.entities(model, golden["texts"])
        except TritonizeError as exc:
            return False, str(exc)
        limit = golden["tolerance"]["max_probability_diff"]
        worst, misses = 0.0, []
        for text, got, expected in zip(golden["texts"], served, golden["entities"], strict=True):
            spans = [(e["label"], e["start"], e["end"]) for e in got]
            if spans != [(e["label"], e["start"], e["end"]) for e in expected]:
                misses.append(f"{text!r}: served {spans}")
                continue
            for a, b in zip(got, expected, strict=True):
                worst = max(worst, abs(a["score"] - b["score"]))
        count = sum(len(found) for found in golden["entities"])
        detail = f"{count} entities in {len(served) - len(misses)}/{len(served)} texts match"
        detail += f", max score diff {worst:.2e}"
        passed = not misses and worst <= limit
        return passed, detail + (f"; first miss: {misses[0]}" if misses else "")

    def golden_requests(self, golden: dict[str, Any]) -> int:
        return 1  # every text in one batch


def _entities_problem(item: bytes) -> str | None:
    """What is wrong with one text's ENTITIES, if anything."""
    try:
        found = json.loads(item)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"is not JSON: {exc}"
    if not isinstance(found, list):
        return f"is a JSON {type(found).__name__}, expected a list"
    for entity in found:
        if not isinstance(entity, dict) or set(entity) != ENTITY_KEYS:
            return f"holds {entity!r}: expected the keys {sorted(ENTITY_KEYS)}"
        if not 0 <= entity["start"] <= entity["end"] or not 0 <= entity["score"] <= 1:
            return f"holds {entity!r}: expected 0 <= start <= end and a score in [0, 1]"
    return None
