"""`embedding`: TEXT in, a pooled L2-normalised EMBEDDING out."""

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
)
from tritonize.tasks.build import (
    EncoderBuild,
    ExportHead,
    PredictionProfile,
    Reference,
    cosine_rows,
    golden_text_outputs,
)
from tritonize.triton_models.common import EMBEDDING, TEXT
from tritonize.triton_models.features import CENTROID_COSINE, embedding_counts

if TYPE_CHECKING:
    from tritonize.client import TritonizeClient
    from tritonize.spec import BuildSpec
    from tritonize.tasks.tolerances import GateTolerance


class EmbeddingBuild(EncoderBuild):
    """The engine's graph pools and normalises: no step after it."""

    engine_output = EMBEDDING
    gate_figure = "min cosine"
    profiles_predictions = True

    export_head = ExportHead(
        output_name="embedding", auto_class="AutoModel", head="MeanPooledEmbedding",
        width_field="hidden_size",
    )  # fmt: skip

    def prediction_profile(self, outputs: np.ndarray, labels: list[str]) -> PredictionProfile:
        """Each reference embedding's cosine to the reference texts' mean direction."""
        mean = outputs.astype(np.float64).mean(axis=0)
        centroid = mean / np.linalg.norm(mean)
        counts = embedding_counts(outputs, centroid)
        return PredictionProfile((CENTROID_COSINE,), counts, tuple(centroid.round(7).tolist()))

    def gate_compare(
        self, tolerance: GateTolerance, case: str, reference: np.ndarray, actual: np.ndarray
    ) -> tuple[list[str], float]:
        cosine = cosine_rows(reference, actual)
        misses = [
            f"{case}: row {i} cosine {c:.6f} < {tolerance.min_cosine}"
            for i, c in enumerate(cosine)
            if c < tolerance.min_cosine
        ]
        return misses, float(cosine.min())

    def golden_reference(self, reference: Reference, spec: BuildSpec) -> dict[str, Any]:
        texts, outputs = golden_text_outputs(reference, spec)
        return {"texts": texts, "embeddings": outputs.round(6).tolist()}


@register
class Embedding(TaskContract):
    name = "embedding"
    inputs = (TEXT_INPUT,)
    outputs = (PublicTensor(EMBEDDING, "FP32", np.float32, (-1,)), TRUNCATED_OUTPUT)
    build = EmbeddingBuild()

    def request(self, texts: list[str]) -> dict[str, list[str]]:
        return {TEXT: texts}

    def response_problem(self, outputs: dict[str, np.ndarray]) -> str | None:
        norms = np.linalg.norm(outputs[EMBEDDING], axis=1)
        if not np.allclose(norms, 1.0, atol=1e-3):
            spread = f"{norms.min():.4f}..{norms.max():.4f}"
            return f"output `{EMBEDDING}` is not L2-normalised (norms {spread})"
        return None

    def golden_problems(
        self, client: TritonizeClient, model: str, golden: dict[str, Any]
    ) -> tuple[bool, str]:
        try:
            served = client.embed(model, golden["texts"]).astype(np.float64)
        except TritonizeError as exc:
            return False, str(exc)
        reference = np.asarray(golden["embeddings"], dtype=np.float64)
        cosine = np.sum(served * reference, axis=1) / (
            np.linalg.norm(served, axis=1) * np.linalg.norm(reference, axis=1)
        )
        worst, least = float(cosine.min()), golden["tolerance"]["min_cosine"]
        return worst >= least, f"min cosine {worst:.6f} (>= {least})"

    def golden_requests(self, golden: dict[str, Any]) -> int:
        return 1  # every text in one batch
