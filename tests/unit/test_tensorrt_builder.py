"""The TensorRT build and run logic against a recording stand-in for the `tensorrt` module.

TensorRT cannot run without a GPU, so this fake records what the builder is asked to do
(tests/gpu builds real plans) and runs "plans" on CPU memory: it reads and writes the tensors
at the addresses it is given, so bindings, dtypes and shapes are checked for real. It checks the
flow around the API: strong typing, the profile, builder settings, parser errors, the timing
cache and the plan file, deserialization with host code allowed, the decoder's contexts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fake_tensorrt import (
    HEAD_DIM,
    KV_HEADS,
    AllocationStrategy,
    DataType,
    Recorder,
    decoder_engine,
    encoder_engine,
    install,
)

from tritonize.engine.profiles import DecoderProfiles, ShapeProfile
from tritonize.errors import EngineError
from tritonize.spec import BuildSpec
from tritonize.triton_models.decoding import past_names


@pytest.fixture
def builder(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Recorder]:
    module, _, rec = install(monkeypatch)
    return module, rec


def spec(tmp_path: Path, **kwargs: Any) -> BuildSpec:
    values = {"name": "m", "task": "embedding", "target": "tensorrt", "max_batch_size": 32,
              "max_seq_len": 256, "timing_cache": tmp_path / "cache.bin", **kwargs}  # fmt: skip
    return BuildSpec(**values)


def test_strongly_typed_build_with_profile_and_settings(builder: Any, tmp_path: Path) -> None:
    module, rec = builder
    build_spec = spec(tmp_path, workspace_mib=1024, builder_optimization_level=5,
                      hardware_compatibility="ampere_plus", version_compatible=True)  # fmt: skip
    plan = module.build_plan(tmp_path / "m.onnx", tmp_path / "model.plan", build_spec,
                             [ShapeProfile.from_spec(build_spec).tensors()])  # fmt: skip
    calls = dict(rec.calls)
    assert calls["network_flags"] == 1 << 3  # STRONGLY_TYPED
    assert calls["workspace"] == 1024 << 20
    assert calls["builder_optimization_level"] == 5
    assert calls["hardware_compatibility_level"] == "AMPERE_PLUS"
    assert ("set_flag", "VERSION_COMPATIBLE") in rec.calls
    assert ("clear_flag", "TF32") in rec.calls  # fp32 means fp32
    shapes = ((1, 1), (16, 128), (32, 256))
    assert calls["profile"] == {"input_ids": shapes, "attention_mask": shapes}
    assert (tmp_path / "model.plan").read_bytes() == b"PLAN"
    assert plan.tensorrt_version == "10.13.0.35"


def test_a_decoder_plan_gets_a_prefill_and_a_decode_profile(builder: Any, tmp_path: Path) -> None:
    module, rec = builder
    build_spec = spec(tmp_path, task="generation", max_batch_size=8, max_seq_len=64)
    profiles = DecoderProfiles.from_spec(build_spec, layers=2, kv_heads=4, head_dim=16)
    module.build_plan(tmp_path / "m.onnx", tmp_path / "p", build_spec, profiles.all())
    prefill, decode = (value for name, value in rec.calls if name == "profile")
    inputs = {"input_ids", "attention_mask", "position_ids", *past_names(2)}
    assert set(prefill) == set(decode) == inputs
    # prefill: up to 8 prompts of up to 63 tokens (one position stays free) behind one masked
    # cache slot: no tensor is ever empty
    assert prefill["input_ids"] == ((1, 1), (1, 63), (8, 63))
    assert prefill["attention_mask"] == ((1, 2), (1, 64), (8, 64))
    assert prefill["past_key_values.1.value"] == ((1, 4, 1, 16), (1, 4, 1, 16), (8, 4, 1, 16))
    # decode: up to 8 sequences, one new token each, caches up to 63 long
    assert decode["input_ids"] == decode["position_ids"] == ((1, 1), (4, 1), (8, 1))
    assert decode["attention_mask"] == ((1, 2), (4, 32), (8, 64))
    assert decode["past_key_values.0.key"] == ((1, 4, 1, 16), (4, 4, 31, 16), (8, 4, 63, 16))


def test_reduced_precision_keeps_tf32_and_needs_no_flags(builder: Any, tmp_path: Path) -> None:
    module, rec = builder
    build_spec = spec(tmp_path, precision="fp16")
    module.build_plan(tmp_path / "m.onnx", tmp_path / "p", build_spec,
                      [ShapeProfile.from_spec(build_spec).tensors()])  # fmt: skip
    assert not any(name in ("clear_flag", "set_flag") for name, _ in rec.calls)


def test_timing_cache_is_reused_and_saved(builder: Any, tmp_path: Path) -> None:
    module, rec = builder
    build_spec = spec(tmp_path)
    (tmp_path / "cache.bin").write_bytes(b"earlier")
    module.build_plan(tmp_path / "m.onnx", tmp_path / "p", build_spec,
                      [ShapeProfile.from_spec(build_spec).tensors()])  # fmt: skip
    assert ("timing_cache_in", b"earlier") in rec.calls
    assert (tmp_path / "cache.bin").read_bytes() == b"earlier+timings"


def test_a_cache_from_elsewhere_is_replaced(builder: Any, tmp_path: Path) -> None:
    module, rec = builder
    rec.cache_fits = False
    build_spec = spec(tmp_path)
    (tmp_path / "cache.bin").write_bytes(b"other-gpu")
    module.build_plan(tmp_path / "m.onnx", tmp_path / "p", build_spec,
                      [ShapeProfile.from_spec(build_spec).tensors()])  # fmt: skip
    assert (tmp_path / "cache.bin").read_bytes() == b"+timings"


def test_every_parser_error_is_reported(builder: Any, tmp_path: Path) -> None:
    module, rec = builder
    rec.parse_ok = False
    build_spec = spec(tmp_path)
    with pytest.raises(EngineError) as info:
        module.build_plan(tmp_path / "m.onnx", tmp_path / "p", build_spec,
                          [ShapeProfile.from_spec(build_spec).tensors()])  # fmt: skip
    assert "node 0: unsupported operator" in str(info.value)
    assert "node 1: unsupported operator" in str(info.value)
    assert not (tmp_path / "p").exists()


def test_a_failed_build_names_tensorrts_errors(builder: Any, tmp_path: Path) -> None:
    module, rec = builder
    rec.build_ok = False
    build_spec = spec(tmp_path)
    with pytest.raises(EngineError, match="no tactic for node /encoder/MatMul"):
        module.build_plan(tmp_path / "m.onnx", tmp_path / "p", build_spec,
                          [ShapeProfile.from_spec(build_spec).tensors()])  # fmt: skip
    assert not (tmp_path / "p").exists()


def test_a_corrupt_timing_cache_is_replaced_with_a_warning(
    builder: Any, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    module, rec = builder
    rec.cache_readable = False
    build_spec = spec(tmp_path)
    (tmp_path / "cache.bin").write_bytes(b"truncated")
    module.build_plan(tmp_path / "m.onnx", tmp_path / "p", build_spec,
                      [ShapeProfile.from_spec(build_spec).tensors()])  # fmt: skip
    assert "unreadable (corrupt or truncated): starting a new one" in capsys.readouterr().err
    assert (tmp_path / "p").read_bytes() == b"PLAN"
    assert (tmp_path / "cache.bin").read_bytes() == b"+timings"


def test_a_first_build_claims_no_reuse(
    builder: Any, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    module, _ = builder
    build_spec = spec(tmp_path)
    module.build_plan(tmp_path / "m.onnx", tmp_path / "p", build_spec,
                      [ShapeProfile.from_spec(build_spec).tensors()])  # fmt: skip
    err = capsys.readouterr().err
    assert "is new" in err and "reused" not in err


def test_the_timing_cache_is_replaced_whole(builder: Any, tmp_path: Path) -> None:
    """A concurrent build that opened the cache reads the old file to its end, never a
    truncated or half-written one, and no temporary file is left behind."""
    module, _ = builder
    build_spec = spec(tmp_path)
    cache = tmp_path / "cache.bin"
    cache.write_bytes(b"earlier")
    with cache.open("rb") as concurrent_reader:
        module.build_plan(tmp_path / "m.onnx", tmp_path / "p", build_spec,
                          [ShapeProfile.from_spec(build_spec).tensors()])  # fmt: skip
        assert concurrent_reader.read() == b"earlier"
    assert cache.read_bytes() == b"earlier+timings"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.bin", "p"]


# -- running plans: the encoder's accuracy-gate runner and the decoder runtime -----------------
@pytest.fixture
def runtimes(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, Recorder]:
    """`engine.tensorrt` and `triton_models.tensorrt_decoder` imported against the fake."""
    return install(monkeypatch)


CPU = torch.device("cpu")


@pytest.mark.parametrize("output_dtype", [DataType.FLOAT, DataType.HALF])
def test_plan_runner_reads_outputs_in_the_engines_dtype(
    runtimes: Any, tmp_path: Path, output_dtype: DataType
) -> None:
    module, _, rec = runtimes
    rec.engine = encoder_engine(rec, output_dtype, CPU)
    (tmp_path / "model.plan").write_bytes(b"PLAN")
    runner = module.PlanRunner(tmp_path / "model.plan", torch.device("cpu"))
    ids = np.array([[1, 2, 3], [4, 5, 0]], dtype=np.int64)
    mask = np.array([[1, 1, 1], [1, 1, 0]], dtype=np.int64)
    for _ in range(2):
        result = runner.run({"input_ids": ids, "attention_mask": mask})
        np.testing.assert_array_equal(result, [[6, 7, 8, 9], [9, 10, 11, 12]])
    assert ("deserialize", b"PLAN", True) in rec.calls  # host code allowed before loading
    assert sum(call[0] == "execute" for call in rec.calls) == 2


def test_plan_runner_refuses_a_rejected_address(runtimes: Any, tmp_path: Path) -> None:
    module, _, rec = runtimes
    rec.engine = encoder_engine(rec, DataType.FLOAT, CPU)
    rec.refused_address = "embedding"
    (tmp_path / "model.plan").write_bytes(b"PLAN")
    runner = module.PlanRunner(tmp_path / "model.plan", torch.device("cpu"))
    ones = np.ones((1, 2), dtype=np.int64)
    with pytest.raises(RuntimeError, match="TensorRT refused the address of tensor `embedding`"):
        runner.run({"input_ids": ones, "attention_mask": ones})
    assert not any(call[0] == "execute" for call in rec.calls)


def test_plan_runner_names_an_undeserializable_plan(runtimes: Any, tmp_path: Path) -> None:
    module, _, _ = runtimes
    (tmp_path / "model.plan").write_bytes(b"FOREIGN")
    with pytest.raises(EngineError, match="cannot deserialize"):
        module.PlanRunner(tmp_path / "model.plan", torch.device("cpu"))


def test_decoder_contexts_share_one_workspace_and_allow_host_code(
    runtimes: Any, tmp_path: Path
) -> None:
    _, decoder, rec = runtimes
    rec.engine = decoder_engine(rec, DataType.HALF, CPU)
    (tmp_path / "model.plan").write_bytes(b"DECODER")
    runtime = decoder.TensorRTDecoderRuntime(tmp_path / "model.plan", torch.device("cpu"))
    assert ("deserialize", b"DECODER", True) in rec.calls
    strategies = [call[1] for call in rec.calls if call[0] == "context"]
    assert strategies == [AllocationStrategy.USER_MANAGED] * 2  # no static max-size copies
    memories = [call[1:] for call in rec.calls if call[0] == "device_memory"]
    assert len(memories) == 2 and memories[0] == memories[1]
    assert memories[0][1] == 4096  # the larger profile's need, allocated once
    assert runtime._workspace.numel() == 4096
    assert [call[1] for call in rec.calls if call[0] == "profile_selected"] == [0, 1]
    assert (runtime.layers, runtime.kv_heads, runtime.head_dim, runtime.vocab) == (2, 2, 3, 5)
    assert runtime.cache_dtype == torch.float16


def test_decoder_steps_bind_in_the_engines_dtypes(runtimes: Any, tmp_path: Path) -> None:
    _, decoder, rec = runtimes
    rec.engine = decoder_engine(rec, DataType.HALF, CPU)
    (tmp_path / "model.plan").write_bytes(b"DECODER")
    runtime = decoder.TensorRTDecoderRuntime(tmp_path / "model.plan", torch.device("cpu"))
    past = [runtime.zeros((2, KV_HEADS, 1, HEAD_DIM)) for _ in range(4)]
    ids = np.array([[7, 8], [3, 4]], dtype=np.int64)
    mask = np.ones((2, 3), dtype=np.int64)
    logits, presents = runtime.run(ids, mask, np.array([[1, 2], [1, 2]]), past)
    np.testing.assert_array_equal(logits, [[80, 81, 82, 83, 84], [40, 41, 42, 43, 44]])
    assert all(p.dtype == torch.float16 and p.shape == (2, KV_HEADS, 3, HEAD_DIM) for p in presents)
    assert presents[3][1, 0, :, 0].tolist() == [0, 3, 4]
    step, _ = runtime.run(np.array([[9], [5]]), np.ones((2, 4), np.int64),
                          np.array([[3], [3]]), presents)  # fmt: skip
    assert step[:, 0].tolist() == [90, 50]


def test_decoder_creates_and_runs_its_engine_on_its_device(
    runtimes: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every TensorRT object is made and run with the runtime's device current (Triton puts
    instances on GPU 1, 2, ... while the current device stays 0)."""
    _, decoder, rec = runtimes
    inside: list[str] = []

    @contextlib.contextmanager
    def recording_scope(device: torch.device) -> Iterator[None]:
        inside.append(str(device))
        rec.calls.append(("enter", str(device)))
        yield
        rec.calls.append(("exit", str(device)))

    monkeypatch.setattr(decoder, "on_device", recording_scope)
    rec.engine = decoder_engine(rec, DataType.FLOAT, CPU)
    (tmp_path / "model.plan").write_bytes(b"DECODER")
    runtime = decoder.TensorRTDecoderRuntime(tmp_path / "model.plan", torch.device("cpu"))
    runtime.run(np.array([[1]]), np.ones((1, 2), np.int64), np.array([[1]]),
                [runtime.zeros((1, KV_HEADS, 1, HEAD_DIM)) for _ in range(4)])  # fmt: skip
    depth, outside = 0, []
    for call in rec.calls:
        depth += {"enter": 1, "exit": -1}.get(call[0], 0)
        if call[0] in ("deserialize", "context", "device_memory", "execute") and depth == 0:
            outside.append(call[0])
    assert outside == [] and inside == ["cpu", "cpu"]
