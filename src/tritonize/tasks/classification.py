"""`classification`: TEXT in, the LABEL, its SCORE and every class's PROBABILITIES out."""

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
    PredictionProfile,
    Reference,
    config_labels,
    golden_text_outputs,
)
from tritonize.triton_models.classifier import softmax
from tritonize.triton_models.common import LABEL, LOGITS, PROBABILITIES, SCORE, TEXT
from tritonize.triton_models.features import label_counts, label_features

if TYPE_CHECKING:
    from tritonize.client import TritonizeClient
    from tritonize.spec import BuildSpec
    from tritonize.tasks.tolerances import GateTolerance


class ClassificationBuild(EncoderBuild):
    """The engine returns fp32 logits; a Python step turns them into labels and scores."""

    engine_output = LOGITS
    gate_figure = "max probability diff"
    needs_trained_head = True  # a made-up head answers with labels drawn by chance
    profiles_predictions = True

    export_head = ExportHead(
        output_name="logits", auto_class="AutoModelForSequenceClassification",
        head="SequenceLogits", width_field="num_labels",
    )  # fmt: skip

    def labels(self, config: Any) -> list[str]:
        return config_labels(config)

    def postprocess(self, labels: list[str], spec: BuildSpec) -> Postprocess:
        width = (len(labels),)
        return Postprocess(
            module="classifier",
            inputs=(PublicTensor(LOGITS, "FP32", np.float32, width),),
            outputs=(*TextClassification.outputs[:2],
                     PublicTensor(PROBABILITIES, "FP32", np.float32, width)),
            parameters={"labels": json.dumps(labels)},
        )  # fmt: skip

    def prediction_profile(self, outputs: np.ndarray, labels: list[str]) -> PredictionProfile:
        features = label_features(labels)
        return PredictionProfile(features, label_counts(features, softmax(outputs)))

    def gate_compare(
        self, tolerance: GateTolerance, case: str, reference: np.ndarray, actual: np.ndarray
    ) -> tuple[list[str], float]:
        expected, got = softmax(reference), softmax(actual)
        worst = float(np.abs(expected - got).max())
        misses = [
            f"{case}: row {i} label {b} differs from reference label {a}"
            for i, (a, b) in enumerate(zip(expected.argmax(1), got.argmax(1), strict=True))
            if a != b
        ]
        if worst > tolerance.max_probability_diff:
            misses.append(
                f"{case}: probability diff {worst:.2e} > {tolerance.max_probability_diff}"
            )
        return misses, worst

    def golden_reference(self, reference: Reference, spec: BuildSpec) -> dict[str, Any]:
        texts, outputs = golden_text_outputs(reference, spec)
        probabilities = softmax(outputs)
        return {
            "texts": texts,
            "probabilities": probabilities.round(6).tolist(),
            "labels": [reference.labels[i] for i in probabilities.argmax(axis=1)],
        }


@register
class TextClassification(TaskContract):
    name = "classification"
    inputs = (TEXT_INPUT,)
    outputs = (
        PublicTensor(LABEL, "BYTES", np.object_),
        PublicTensor(SCORE, "FP32", np.float32),
        PublicTensor(PROBABILITIES, "FP32", np.float32, (-1,)),
        TRUNCATED_OUTPUT,
    )
    build = ClassificationBuild()

    def request(self, texts: list[str]) -> dict[str, list[str]]:
        return {TEXT: texts}

    def response_problem(self, outputs: dict[str, np.ndarray]) -> str | None:
        return None  # shapes, finite values and non-empty labels are all it promises

    def golden_problems(
        self, client: TritonizeClient, model: str, golden: dict[str, Any]
    ) -> tuple[bool, str]:
        try:
            outputs = client.infer(model, golden["texts"])
        except TritonizeError as exc:
            return False, str(exc)
        labels = [label.decode() for label in outputs[LABEL][:, 0]]
        diff = float(np.abs(outputs[PROBABILITIES] - np.asarray(golden["probabilities"])).max())
        same = labels == golden["labels"]
        passed = same and diff <= golden["tolerance"]["max_probability_diff"]
        verdict = "labels match" if same else f"labels differ: {labels} vs {golden['labels']}"
        return passed, f"{verdict}, max probability diff {diff:.2e}"

    def golden_requests(self, golden: dict[str, Any]) -> int:
        return 1  # every text in one batch
