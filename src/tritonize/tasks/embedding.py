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
    response_problem,
)
from tritonize.triton_models.common import EMBEDDING

if TYPE_CHECKING:
    from tritonize.client import TritonizeClient


@register
class Embedding(TaskContract):
    name = "embedding"
    inputs = (TEXT_INPUT,)
    outputs = (PublicTensor(EMBEDDING, "FP32", np.float32, (-1,)), TRUNCATED_OUTPUT)

    def call(
        self, client: TritonizeClient, model: str, text: str, metadata: dict[str, Any]
    ) -> str | None:
        return response_problem(client.infer(model, [text]), 1, metadata)

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
