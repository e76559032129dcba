"""Question answering, reranking and named entities export for every registered encoder
family (ONNX Runtime validated against PyTorch), each from a tiny random checkpoint with the
task's head, and write a golden record a deployment is checked against."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from conftest import TOKENIZER_FILES

from helpers import FIXTURES
from tritonize.export import ARCHITECTURES, export_onnx
from tritonize.spec import BuildSpec
from tritonize.triton_models.common import TOKEN_TYPE_IDS

HEADS = {
    "question-answering": "AutoModelForQuestionAnswering",
    "rerank": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
}
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def tiny_head_checkpoint(family: str, task: str, dest: Path, tokenizer_from: Path) -> Path:
    """The family's tiny config with the task's head, random weights, the MiniLM tokenizer."""
    values = json.loads((FIXTURES / "tiny_configs" / f"{family}.json").read_text())
    if task == "rerank":
        values["num_labels"] = 1
    if task == "token-classification":
        values["id2label"] = dict(enumerate(NER_LABELS))
        values["label2id"] = {label: i for i, label in enumerate(NER_LABELS)}
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**values, initializer_range=0.5)
    getattr(transformers, HEADS[task]).from_config(config).eval().save_pretrained(dest)
    for name in TOKENIZER_FILES:
        (dest / name).write_bytes((tokenizer_from / name).read_bytes())
    return dest


@pytest.mark.parametrize("task", sorted(HEADS))
@pytest.mark.parametrize("family", sorted(ARCHITECTURES))
def test_each_family_exports_each_new_task(
    family: str, task: str, minilm_dir: Path, tmp_path: Path
) -> None:
    checkpoint = tiny_head_checkpoint(family, task, tmp_path / "checkpoint", minilm_dir)
    spec = BuildSpec(name="m", task=task, model=checkpoint, max_batch_size=4, max_seq_len=32)
    exported = export_onnx(spec, tmp_path)
    assert max(exported.max_abs_diff.values()) < 1e-4
    config = transformers.AutoConfig.from_pretrained(checkpoint)
    # Pairs are told apart by token types exactly where the checkpoint has more than one.
    takes_types = task != "token-classification" and getattr(config, "type_vocab_size", 0) > 1
    assert (TOKEN_TYPE_IDS in exported.graph_inputs) == takes_types
    golden = exported.golden
    if task == "question-answering":
        assert golden["answers"] and all(
            answer["answer"] == context[answer["start"] : answer["end"]]
            for (_, context), answer in zip(golden["questions"], golden["answers"], strict=True)
        )
    elif task == "rerank":
        assert len(golden["scores"]) == len(golden["pairs"])
        assert all(0 <= score <= 1 for score in golden["scores"])  # a sigmoid's
    else:
        assert exported.labels == NER_LABELS
        assert len(golden["entities"]) == len(golden["texts"])
