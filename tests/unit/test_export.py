"""ONNX export of every registered architecture, validated against PyTorch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tritonize.errors import ExportError, SpecError, ValidationError
from tritonize.export import ARCHITECTURES, export_onnx
from tritonize.export.onnx_export import validate_onnx
from tritonize.export.tasks import TASKS
from tritonize.spec import BuildSpec, Task
from tritonize.triton_models.onnx_runner import OnnxEncoder

FIXTURES = Path(__file__).parents[1] / "fixtures"
TINY_CONFIGS = {p.stem for p in (FIXTURES / "tiny_configs").glob("*.json")}


def test_every_architecture_has_a_tiny_test_model() -> None:
    missing = set(ARCHITECTURES) - TINY_CONFIGS
    assert not missing, f"add fixtures/tiny_configs/<model_type>.json for {sorted(missing)}"


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_export_validates_every_architecture(
    model_type: str, tiny_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    spec = BuildSpec(
        name="m",
        task="embedding",
        model=tiny_checkpoint(model_type),
        max_batch_size=4,
        max_seq_len=32,
    )
    exported = export_onnx(spec, tmp_path)
    assert exported.onnx_path.exists()
    assert exported.output_dim == 32
    assert len(exported.max_abs_diff) == 3  # batch 1, max batch, full length
    assert max(exported.max_abs_diff.values()) < 1e-4


def test_classifier_export_carries_labels(classifier_dir: Path, tmp_path: Path) -> None:
    spec = BuildSpec(name="s", task="classification", model=classifier_dir, max_batch_size=4)
    exported = export_onnx(spec, tmp_path)
    assert exported.labels == ["negative", "neutral", "positive"]
    assert exported.output_dim == 3
    assert exported.task.output_name == "logits"


def test_graph_has_dynamic_batch_and_sequence_axes(
    tiny_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    import onnx

    spec = BuildSpec(name="m", task="embedding", model=tiny_checkpoint("bert"), max_batch_size=2)
    graph = onnx.load(str(export_onnx(spec, tmp_path).onnx_path)).graph
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}


def test_padded_requests_merge_without_changing_results(
    tiny_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    """What the engine step does with ragged requests equals running each alone."""
    spec = BuildSpec(name="m", task="embedding", model=tiny_checkpoint("bert"), max_batch_size=4)
    exported = export_onnx(spec, tmp_path)
    encoder = OnnxEncoder(exported.onnx_path, "embedding", pad_id=0, threads=1)
    short = {"input_ids": np.array([[101, 7592, 102]]), "attention_mask": np.ones((1, 3), np.int64)}
    long = {
        "input_ids": np.array([[101, 7592, 2088, 2003, 2307, 102]]),
        "attention_mask": np.ones((1, 6), dtype=np.int64),
    }
    merged = encoder.run([short, long])
    alone = [encoder.run([short])[0], encoder.run([long])[0]]
    np.testing.assert_allclose(merged[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(merged[1], alone[1], atol=1e-5)


class CallWidths:
    """The real session, recording the shape of each call it runs."""

    def __init__(self, session: Any) -> None:
        self.session, self.shapes = session, []

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> Any:
        self.shapes.append(feeds["input_ids"].shape)
        return self.session.run(names, feeds)


def _request(rng: np.random.Generator, lengths: list[int]) -> dict[str, np.ndarray]:
    """Rows of the given lengths, right-padded to the longest (as the tokenizer step sends)."""
    width = max(lengths)
    ids = np.zeros((len(lengths), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = [101, *rng.integers(1000, 5000, length - 2), 102]
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize(
    ("task", "config"), [("embedding", "bert"), ("token-classification", "bert-ner")]
)
def test_short_and_long_rows_run_apart_with_the_results_of_each_alone(
    tiny_checkpoint: Callable[[str], Path], tmp_path: Path, task: str, config: str
) -> None:
    """A 250-token request batched with short ones no longer pads them all to 250; a pooled
    output also drops a request's own padding (its short row runs with the other short ones),
    a per-token output keeps each request's width."""
    spec = BuildSpec(
        name="m", task=task, model=tiny_checkpoint(config), max_batch_size=8, max_seq_len=256,
        allow_untrained_head=True,
    )  # fmt: skip
    exported = export_onnx(spec, tmp_path)
    encoder = OnnxEncoder(exported.onnx_path, exported.task.output_name, pad_id=0, threads=1)
    rng = np.random.default_rng(0)
    requests = [
        _request(rng, [9]),
        _request(rng, [250, 12]),
        _request(rng, [10]),
        _request(rng, [11]),
    ]
    alone = [encoder.run([request])[0] for request in requests]
    encoder.session = CallWidths(encoder.session)
    merged = encoder.run(requests)
    for got, want in zip(merged, alone, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)
    if task == "embedding":
        assert sorted(encoder.session.shapes) == [(1, 250), (4, 12)]
    else:
        assert sorted(encoder.session.shapes) == [(2, 250), (3, 11)]


def test_validation_miss_lists_every_case(classifier_dir: Path, tmp_path: Path) -> None:
    spec = BuildSpec(name="s", task="classification", model=classifier_dir, max_batch_size=4)
    exported = export_onnx(spec, tmp_path)
    other = TASKS[Task.CLASSIFICATION].load(classifier_dir, trust_remote_code=False)
    with torch.no_grad():
        other.classifier.classifier.bias.add_(0.5)  # a reference the graph no longer matches
    with pytest.raises(ValidationError) as info:
        validate_onnx(other, exported, spec)
    assert len(info.value.mismatches) == 3
    assert all("output `logits` max abs diff" in m for m in info.value.mismatches)


def test_unknown_architecture_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ExportError, match="model_type `gpt2`.*expected one of bert"):
        export_onnx(BuildSpec(name="m", task="embedding", model=tmp_path), tmp_path)


def test_seq_len_beyond_positions_is_rejected(
    tiny_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    spec = BuildSpec(name="m", task="embedding", model=tiny_checkpoint("roberta"), max_seq_len=513)
    with pytest.raises(SpecError, match="`max_seq_len` = 513.*at most 512 positions"):
        export_onnx(spec, tmp_path)
