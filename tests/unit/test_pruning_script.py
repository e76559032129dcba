"""The pruning operations of scripts/benchmark_pruning.py, on a tiny random BERT."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from tritonize.export.tasks import MeanPooledEmbedding

SCRIPT = Path(__file__).parents[2] / "scripts" / "benchmark_pruning.py"
HEADS, HEAD_SIZE, WIDTH = 4, 8, 40


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark_pruning", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=HEADS * HEAD_SIZE, num_hidden_layers=2,
        num_attention_heads=HEADS, intermediate_size=WIDTH, max_position_embeddings=64,
    )  # fmt: skip
    return MeanPooledEmbedding(BertModel(config, add_pooling_layer=False)).eval()


def feeds() -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(1, 100, size=(3, 7))
    mask = np.ones_like(ids)
    mask[1, 4:] = 0  # padding: calibration rows are real tokens only
    ids[1, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def embed(model: torch.nn.Module) -> torch.Tensor:
    batch = feeds()
    with torch.inference_mode():
        return model(
            torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
        )


def test_heads_whose_output_columns_are_zero_go_first_and_change_nothing(
    script: ModuleType,
) -> None:
    model = tiny_model()
    for layer in script.encoder_layers(model):
        with torch.no_grad():  # head 2 adds nothing to the attention output
            layer.attention.output.dense.weight[:, 2 * HEAD_SIZE : 3 * HEAD_SIZE] = 0
    before = embed(model)
    script.prune_heads(model, 1, None)
    for layer in script.encoder_layers(model):
        assert layer.attention.self.query.out_features == (HEADS - 1) * HEAD_SIZE
        assert layer.attention.output.dense.in_features == (HEADS - 1) * HEAD_SIZE
        assert script.head_count(layer) == HEADS - 1
    torch.testing.assert_close(embed(model), before)


def test_neurons_without_weights_go_first_and_change_nothing(script: ModuleType) -> None:
    model = tiny_model()
    dead = torch.arange(0, WIDTH, 4)  # a quarter of the neurons
    for layer in script.encoder_layers(model):
        with torch.no_grad():
            layer.intermediate.dense.weight[dead] = 0
            layer.output.dense.weight[:, dead] = 0
    before = embed(model)
    script.prune_ffn(model, 0.25, None)
    for layer in script.encoder_layers(model):
        assert layer.intermediate.dense.out_features == WIDTH - len(dead)
        assert layer.output.dense.in_features == WIDTH - len(dead)
    torch.testing.assert_close(embed(model), before)


def test_calibrated_pruning_captures_real_tokens_and_keeps_the_shape(script: ModuleType) -> None:
    model = tiny_model()
    captured = script.capture_inputs(model, [feeds()])
    tokens = int(feeds()["attention_mask"].sum())
    assert captured[script.ATTENTION_OUT, 0].shape == (tokens, HEADS * HEAD_SIZE)
    assert captured[script.FFN_OUT, 1].shape == (tokens, WIDTH)
    before = embed(model)
    script.prune_ffn(script.prune_heads(model, 2, captured), 0.5, captured)
    after = embed(model)
    assert after.shape == before.shape
    assert torch.isfinite(after).all()


def test_bias_takes_the_mean_of_removed_inputs(script: ModuleType) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 3)
    inputs = torch.randn(10, 4)
    inputs[:, 1] = 2.5  # a constant input: dropping it is exact once its mean is in the bias
    sliced = script.drop_inputs(linear, torch.tensor([0, 2, 3]), inputs)
    torch.testing.assert_close(sliced(inputs[:, [0, 2, 3]]), linear(inputs))


def test_unstructured_zeroes_the_share_of_layer_weights(script: ModuleType) -> None:
    model = tiny_model()
    total, nonzero = script.linear_weight_count(model)
    assert nonzero == total
    script.prune_unstructured(model, 0.3)
    total, nonzero = script.linear_weight_count(model)
    assert nonzero == total - round(0.3 * total)
    assert not any(name.endswith("_orig") for name, _ in model.named_parameters())


def test_verdict_names_real_speed_ups_and_says_when_no_pruning_pays(script: ModuleType) -> None:
    def row(name: str, cut: float, speed: float, cosine: float, misses: list[str]) -> object:
        figures = {"mean_cosine": cosine, "min_cosine": cosine, "neighbour_overlap": 1.0}
        return script.Row(name, cut, 1, 1, 1.0, 1.0, [speed], figures, misses)

    rows = [
        row("fp32", 0.0, 1.0, 1.0, []),
        row("int8 fp32", 0.0, 1.3, 0.991, []),
        row("ffn-0.1", 0.07, 1.08, 0.975, ["mean cosine"]),
        row("ffn-0.5", 0.33, 1.35, 0.8, ["mean cosine"]),
        row("unstructured-0.1", 0.1, 1.0, 0.995, []),
    ]
    lines = script.verdict(rows, 1.1)
    assert lines[0] == "int8 fp32: passes the gate at 1.30x"
    assert lines[1].startswith("ffn-0.1: close (mean cosine) at 1.08x: a distillation pass")
    assert lines[2] == "unstructured-0.1: passes the gate but only 1.00x (< 1.1x)"
    assert lines[3] == "No pruned variant passes the gate with a speed-up >= 1.1x."
    assert len(lines) == 4
    assert "ffn-0.5" in script.table(rows) and "FAIL" in script.table(rows)
