"""The CUDA side of the TensorRT runtimes, with TensorRT's stand-in (tests/fake_tensorrt.py)
running its kernels with PyTorch on the CUDA memory and stream it is given: the decoder's
tensors on the GPU, its engine made on its instance's GPU, its step ordered after the work that
produced its inputs. Needs CUDA PyTorch, not TensorRT."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from fake_tensorrt import HEAD_DIM, KV_HEADS, DataType, decoder_engine, encoder_engine, install


@pytest.fixture
def runtimes(monkeypatch: pytest.MonkeyPatch) -> Any:
    return install(monkeypatch)


def decoder_on(runtimes: Any, tmp_path: Any, device: torch.device) -> Any:
    _, decoder, rec = runtimes
    rec.engine = decoder_engine(rec, DataType.HALF, device)
    (tmp_path / "model.plan").write_bytes(b"DECODER")
    return decoder.TensorRTDecoderRuntime(tmp_path / "model.plan", device), rec


def test_decoder_steps_keep_the_cache_on_the_gpu(runtimes: Any, tmp_path: Any) -> None:
    runtime, _ = decoder_on(runtimes, tmp_path, torch.device("cuda", 0))
    past = [runtime.zeros((2, KV_HEADS, 1, HEAD_DIM)) for _ in range(4)]
    ids = np.array([[7, 8], [3, 4]], dtype=np.int64)
    logits, presents = runtime.run(ids, np.ones((2, 3), np.int64), np.array([[1, 2]] * 2), past)
    np.testing.assert_array_equal(logits[:, 0], [80, 40])
    assert all(p.is_cuda and p.dtype == torch.float16 for p in presents)
    assert presents[0][1, 0, :, 0].tolist() == [0, 3, 4]
    assert runtime._workspace.is_cuda


def test_a_decoder_step_waits_for_the_stream_that_made_its_cache(
    runtimes: Any, tmp_path: Any
) -> None:
    """The caches are filled on PyTorch's current stream, behind a kernel that spins for about
    a second; a step that did not wait for that stream would read them unfilled."""
    runtime, _ = decoder_on(runtimes, tmp_path, torch.device("cuda", 0))
    past = [runtime.zeros((1, KV_HEADS, 1, HEAD_DIM)) for _ in range(4)]
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # GPU cycles, on the current stream
    for tensor in past:
        tensor.fill_(7)
    _, presents = runtime.run(np.array([[9]]), np.ones((1, 2), np.int64), np.array([[1]]), past)
    assert presents[0][0, 0, :, 0].tolist() == [7, 9]


def test_plan_runner_uses_one_stream(runtimes: Any, tmp_path: Any) -> None:
    engine_module, _, rec = runtimes
    rec.engine = encoder_engine(rec, DataType.HALF, torch.device("cuda", 0))
    (tmp_path / "model.plan").write_bytes(b"PLAN")
    runner = engine_module.PlanRunner(tmp_path / "model.plan")
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    for _ in range(3):
        result = runner.run({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        np.testing.assert_array_equal(result, [[6, 7, 8, 9]])
    streams = {call[1] for call in rec.calls if call[0] == "execute"}
    assert streams == {runner.stream.cuda_stream} and 0 not in streams


def test_decoder_of_a_second_gpu_is_made_and_run_there(runtimes: Any, tmp_path: Any) -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    assert torch.cuda.current_device() == 0
    runtime, rec = decoder_on(runtimes, tmp_path, torch.device("cuda", 1))
    past = [runtime.zeros((1, KV_HEADS, 1, HEAD_DIM)) for _ in range(4)]
    _, presents = runtime.run(np.array([[9]]), np.ones((1, 2), np.int64), np.array([[1]]), past)
    devices = {
        call[-1] for call in rec.calls if call[0] in ("deserialized_on", "context", "execute")
    }
    assert devices == {1}
    assert all(p.device == torch.device("cuda", 1) for p in presents)
    assert torch.cuda.current_device() == 0  # restored for the rest of the process
