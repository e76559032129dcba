"""Classification postprocess: logits -> LABEL, SCORE, PROBABILITIES.

Softmax runs here in float64 so that a reduced-precision engine only has to get logits right.
The step is public, so logits that are not [batch, labels] finite numbers are refused by name.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .common import (
    LABEL,
    LOGITS,
    PROBABILITIES,
    SCORE,
    RequestError,
    error_responses,
    model_parameters,
    rejection,
)
from .features import PREDICTION, feature_metrics, label_counts

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: the logic below stays importable and testable
    pb_utils = None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class Classifier:
    """Maps logits to labels through the checkpoint's `id2label`."""

    def __init__(self, labels: list[str]) -> None:
        self.labels = np.array([label.encode() for label in labels], dtype=object)

    def check(self, logits: np.ndarray) -> None:
        """Raise `RequestError` unless `logits` is [batch, labels] of finite numbers."""
        if logits.ndim != 2 or logits.shape[1] != len(self.labels) or not logits.shape[0]:
            raise RequestError(
                f"`{LOGITS}` has shape {list(logits.shape)}: expected [batch, {len(self.labels)}]"
            )
        if not np.isfinite(logits).all():
            raise RequestError(f"`{LOGITS}` holds NaN or infinite values: expected finite numbers")

    def postprocess(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels BYTES [B, 1], scores FP32 [B, 1], probabilities FP32 [B, N])."""
        self.check(logits)
        probabilities = softmax(logits)
        best = probabilities.argmax(axis=1)
        scores = probabilities[np.arange(len(best)), best]
        return (
            self.labels[best].reshape(-1, 1),
            scores.astype(np.float32).reshape(-1, 1),
            probabilities.astype(np.float32),
        )


class TritonPythonModel:
    """Thin adapter: tensors in, tensors out, errors as responses."""

    def initialize(self, args: dict[str, str]) -> None:
        self.name = args["model_name"]
        self.classifier = Classifier(json.loads(model_parameters(args)["labels"]))
        self.features = feature_metrics(pb_utils, args, PREDICTION)

    def finalize(self) -> None:
        if self.features is not None:
            self.features.flush()

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            return [self._respond(r) for r in requests]
        except Exception as exc:  # answer every request rather than crash the stub
            pb_utils.Logger.log_error(f"{self.name}: {exc!r}")
            return error_responses(pb_utils, len(requests), f"postprocess failed: {exc}")

    def _respond(self, request: Any) -> Any:
        logits = pb_utils.get_input_tensor_by_name(request, LOGITS).as_numpy()
        try:
            labels, scores, probabilities = self.classifier.postprocess(logits)
        except RequestError as exc:
            return rejection(pb_utils, exc)
        if self.features is not None:
            self.features.add(label_counts(self.features.features, probabilities))
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(LABEL, labels),
                pb_utils.Tensor(SCORE, scores),
                pb_utils.Tensor(PROBABILITIES, probabilities),
            ]
        )
