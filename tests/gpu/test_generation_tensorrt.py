"""The TensorRT generation path: a decoder plan with a prefill and a decode profile, built and
gated against ONNX Runtime, then decoding through the generator's scheduler with prompts joining
and leaving the batch: at fp32, greedy tokens identical to Hugging Face `generate`; fp16 and
bf16 plans pass their gates and generate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import PROMPTS, greedy_through_scheduler, hf_greedy
from tritonize.engine.compat import EngineRuntime
from tritonize.repository.checker import check_repository
from tritonize.repository.manifest import read_manifest
from tritonize.repository.writer import build_repository
from tritonize.spec import BuildSpec
from tritonize.triton_models.decoding import DecoderSession

NEW_TOKENS = 12


@pytest.mark.parametrize("family", ["gpt2-decoder", "llama-decoder"])
def test_decoder_plan_decodes_like_hf_generate(
    family: str, tiny_decoder: Callable[[str], Path], tmp_path: Path
) -> None:
    from tritonize.triton_models.tensorrt_decoder import TensorRTDecoderRuntime

    checkpoint = tiny_decoder(family)
    spec = BuildSpec(
        name="tiny", task="generation", target="tensorrt", model=checkpoint,
        output=tmp_path / "repo", max_batch_size=8, max_seq_len=128,
        timing_cache=tmp_path / "timing.cache",
    )  # fmt: skip
    result = build_repository(spec)  # raises if the accuracy gate fails
    version = result.repository / "tiny" / "1"
    manifest = read_manifest(version)
    assert manifest["accuracy_gate"]["decode_top1_agreement"] == 1.0
    assert manifest["tensorrt"]["profile"]["decode"]["max"] == [8, 127]
    check_repository(result.repository, EngineRuntime.detect())

    runtime = TensorRTDecoderRuntime(version / "model.plan")
    session = DecoderSession(runtime)
    results = greedy_through_scheduler(checkpoint, session, PROMPTS, NEW_TOKENS)
    for prompt, generated in results:
        assert generated == hf_greedy(checkpoint, prompt, NEW_TOKENS)
    assert any(len(generated) > 3 for _, generated in results)


def test_the_cache_stays_on_the_gpu(tiny_decoder: Callable[[str], Path], tmp_path: Path) -> None:
    from tritonize.triton_models.tensorrt_decoder import TensorRTDecoderRuntime

    spec = BuildSpec(
        name="tiny", task="generation", target="tensorrt", model=tiny_decoder("llama-decoder"),
        output=tmp_path / "repo", max_batch_size=4, max_seq_len=64,
        timing_cache=tmp_path / "timing.cache",
    )  # fmt: skip
    plan = build_repository(spec).repository / "tiny" / "1" / "model.plan"
    session = DecoderSession(TensorRTDecoderRuntime(plan))
    session.prefill({"a": [5, 6, 7], "b": [5]})
    session.decode(["a", "b"], [8, 9])
    logits = session.decode(["a", "b"], [10, 11])
    assert logits.shape[0] == 2
    assert all(t.is_cuda for t in session.past)
    assert session.lengths == [5, 3]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_typed_decoder_plan_passes_its_gates_and_generates(
    precision: str, tiny_decoder: Callable[[str], Path], tmp_path: Path
) -> None:
    import torch

    from tritonize.triton_models.tensorrt_decoder import TensorRTDecoderRuntime

    checkpoint = tiny_decoder("llama-decoder")
    spec = BuildSpec(
        name="tiny", task="generation", target="tensorrt", precision=precision,
        model=checkpoint, output=tmp_path / "repo", max_batch_size=8, max_seq_len=128,
        timing_cache=tmp_path / "timing.cache",
    )  # fmt: skip
    version = build_repository(spec).repository / "tiny" / "1"  # both gates inside
    runtime = TensorRTDecoderRuntime(version / "model.plan")
    assert runtime.cache_dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    results = greedy_through_scheduler(checkpoint, DecoderSession(runtime), PROMPTS, NEW_TOKENS)
    assert any(len(generated) > 3 for _, generated in results)
