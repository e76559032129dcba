"""The TensorRT build logic against a recording stand-in for the `tensorrt` module.

TensorRT cannot run without a GPU, so this fake only records what the builder is asked to do
(tests/gpu builds real plans). It checks the flow around the API: strong typing, the profile,
builder settings, parser errors, the timing cache and the plan file.
"""

from __future__ import annotations

import enum
import importlib
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from tritonize.engine.profiles import DecoderProfiles, ShapeProfile
from tritonize.errors import EngineError
from tritonize.spec import BuildSpec
from tritonize.triton_models.decoding import past_names


class Severity(enum.Enum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.parse_ok = True
        self.build_ok = True
        self.cache_fits = True


def fake_tensorrt(rec: Recorder) -> ModuleType:
    trt = ModuleType("tensorrt")
    trt.__version__ = "10.13.0.35"

    class ILogger:
        Severity = Severity

        def __init__(self) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+timings"

    class Config:
        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            rec.calls.append(("workspace", size))

        def clear_flag(self, flag: str) -> None:
            rec.calls.append(("clear_flag", flag))

        def set_flag(self, flag: str) -> None:
            rec.calls.append(("set_flag", flag))

        def add_optimization_profile(self, profile: Any) -> None:
            rec.calls.append(("profile", profile.shapes))

        def create_timing_cache(self, data: bytes) -> TimingCache:
            rec.calls.append(("timing_cache_in", data))
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            return rec.cache_fits or cache.data == b""

        def __setattr__(self, name: str, value: Any) -> None:
            rec.calls.append((name, value))

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
            self.shapes[name] = (low, opt, high)

    class Builder:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> str:
            rec.calls.append(("network_flags", flags))
            return "network"

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: str, config: Config) -> bytes | None:
            if not rec.build_ok:
                self.logger.log(Severity.ERROR, "no tactic for node /encoder/MatMul")
                return None
            return b"PLAN"

    class OnnxParser:
        num_errors = 2

        def __init__(self, network: str, logger: Any) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            rec.calls.append(("parse", path))
            return rec.parse_ok

        def get_error(self, index: int) -> str:
            return f"node {index}: unsupported operator"

    trt.ILogger = ILogger
    trt.IProgressMonitor = IProgressMonitor
    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    trt.Dims = tuple
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=3)
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = SimpleNamespace(TF32="TF32", VERSION_COMPATIBLE="VERSION_COMPATIBLE")
    trt.HardwareCompatibilityLevel = SimpleNamespace(
        NONE="NONE", AMPERE_PLUS="AMPERE_PLUS", SAME_COMPUTE_CAPABILITY="SAME_CC"
    )
    trt.IBuilderConfig = Config
    trt.ITimingCache = TimingCache
    return trt


@pytest.fixture
def builder(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Recorder]:
    rec = Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(rec))
    monkeypatch.delitem(sys.modules, "tritonize.engine.tensorrt", raising=False)
    module = importlib.import_module("tritonize.engine.tensorrt")
    yield module, rec
    sys.modules.pop("tritonize.engine.tensorrt", None)


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
