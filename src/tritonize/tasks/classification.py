"""`classification`: TEXT in, the LABEL, its SCORE and every class's PROBABILITIES out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tritonize.errors import TritonizeError
from tritonize.tasks.base import (
    TEXT_INPUT,
    TRUNCATED_OUTPUT,
    PublicTensor,
    TaskContract,
    register,
    response_problem,
)
from tritonize.triton_models.common import LABEL, PROBABILITIES, SCORE

if TYPE_CHECKING:
    from tritonize.client import TritonizeClient


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

    def call(
        self, client: TritonizeClient, model: str, text: str, metadata: dict[str, Any]
    ) -> str | None:
        return response_problem(client.infer(model, [text]), 1, metadata)

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
