"""TensorRT plans of question answering, reranking and named entities (tiny checkpoints): each
built with its token types where the graph takes them, held to its task's gate against the
fp32 ONNX graph, and answering like PyTorch through the serving code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from tritonize.repository.manifest import read_manifest
from tritonize.repository.writer import build_repository
from tritonize.spec import BuildSpec
from tritonize.tasks.build import StepNames

CHECKPOINTS = {
    "question-answering": ("bert-qa", "AutoModelForQuestionAnswering"),
    "rerank": ("bert-rerank", "AutoModelForSequenceClassification"),
    "token-classification": ("bert-ner", "AutoModelForTokenClassification"),
}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("task", sorted(CHECKPOINTS))
def test_task_plan_passes_its_gate_and_matches_pytorch(
    task: str, precision: str, tiny_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    from tritonize.engine.tensorrt import PlanRunner

    name, auto_class = CHECKPOINTS[task]
    checkpoint = tiny_checkpoint(name)
    spec = BuildSpec(
        name="m", task=task, model=checkpoint, target="tensorrt", precision=precision,
        output=tmp_path / "repo", max_batch_size=8, max_seq_len=64,
    )  # fmt: skip
    result = build_repository(spec)  # raises if the task's gate fails
    engine = result.repository / StepNames("m", 1).engine / "1"
    manifest = read_manifest(engine)
    assert manifest["accuracy_gate"], manifest
    assert max(manifest["accuracy_gate"].values()) <= (1e-3 if precision == "fp32" else 1e-2)

    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    if task == "token-classification":
        feeds = tokenizer(["Angela Merkel met Macron in Paris."], return_tensors="np")
        feeds.pop("token_type_ids")  # a single-text graph takes ids and mask only
    else:
        feeds = tokenizer(["Who released Triton?"], ["NVIDIA released Triton in 2018."],
                          return_tensors="np")  # fmt: skip
    arrays = {key: np.asarray(value, dtype=np.int64) for key, value in feeds.items()}
    served = PlanRunner(engine / "model.plan").run(arrays)

    model = getattr(transformers, auto_class).from_pretrained(checkpoint).eval()
    with torch.inference_mode():
        out = model(**{key: torch.from_numpy(value) for key, value in arrays.items()})
    if task == "question-answering":
        expected = torch.stack((out.start_logits, out.end_logits), dim=-1).numpy()
    elif task == "rerank":
        expected = torch.sigmoid(out.logits).numpy()
    else:
        expected = out.logits.numpy()
    tolerance = 1e-3 if precision == "fp32" else 5e-2
    np.testing.assert_allclose(served, expected, atol=tolerance * max(1.0, np.abs(expected).max()))
