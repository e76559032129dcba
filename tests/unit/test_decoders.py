"""Decoder export with the KV cache, validated against PyTorch for every registered family."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tritonize.export.decoders import (
    DECODERS,
    export_decoder,
    load_decoder,
    past_names,
    validate_decoder,
)

TESTED = {"gpt2": "gpt2-decoder", "llama": "llama-decoder"}  # mistral, qwen2: Llama's layout


@pytest.mark.parametrize("family", sorted(TESTED))
def test_export_with_cache_matches_pytorch(
    family: str, tiny_decoder: Callable[[str], Path], tmp_path: Path
) -> None:
    import onnx

    wrapper, config = load_decoder(tiny_decoder(TESTED[family]), trust_remote_code=False)
    path = tmp_path / "model.onnx"
    export_decoder(wrapper, config, path, opset=17)
    diffs = validate_decoder(wrapper, config, path)
    assert max(diffs.values()) < 1e-4
    graph = onnx.load(str(path)).graph
    names = [i.name for i in graph.input]
    assert names == ["input_ids", "attention_mask", "position_ids", *past_names(2)]
    assert not any(node.op_type == "If" for node in graph.node)


def test_registry_knows_the_llama_layout_families() -> None:
    assert {"gpt2", "llama", "mistral", "qwen2"} <= set(DECODERS)
