"""A recording stand-in for the `tensorrt` module, for tests on machines without TensorRT.

The builder side records what it is asked to do (tests/gpu builds real plans). The runtime side
runs "plans" for real on the memory it is given: its kernels view the bound addresses as PyTorch
tensors (CPU memory through `__array_interface__`, CUDA memory through
`__cuda_array_interface__`) and compute on the stream they are enqueued on, so bindings, dtypes,
shapes, devices and stream ordering are checked, not assumed.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import sys
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from tritonize.triton_models.decoding import past_names, present_names


class Severity(enum.Enum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3


class DataType(enum.Enum):
    FLOAT = torch.float32
    HALF = torch.float16
    BF16 = torch.bfloat16
    INT32 = torch.int32
    INT64 = torch.int64


class TensorIOMode(enum.Enum):
    INPUT = 0
    OUTPUT = 1


class AllocationStrategy(enum.Enum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class Logger:
    WARNING = 2

    def __init__(self, severity: int) -> None:
        pass


class Recorder:
    """What the fake was asked, and the answers it gives."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.parse_ok = True
        self.build_ok = True
        self.cache_fits = True
        self.cache_readable = True
        self.refused_address: str | None = None  # set_tensor_address returns False for it
        self.engine: Any = None  # what deserialize_cuda_engine returns
        self.runtimes: list[Any] = []

    def current_device(self) -> int | None:
        return torch.cuda.current_device() if torch.cuda.is_available() else None


_TYPESTR = {torch.float32: "<f4", torch.float16: "<f2", torch.int32: "<i4", torch.int64: "<i8"}


class _Memory:
    """What `torch.as_tensor` / `np.asarray` read as the memory at an address."""

    def __init__(self, address: int, shape: tuple[int, ...], dtype: torch.dtype, cuda: bool):
        interface = {"data": (address, False), "shape": tuple(shape),
                     "typestr": _TYPESTR[dtype], "version": 3}  # fmt: skip
        if cuda:
            self.__cuda_array_interface__ = {**interface, "stream": None}
        else:
            self.__array_interface__ = interface


def view(address: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Any:
    """The tensor at `address` on `device`, sharing its memory."""
    memory = _Memory(address, shape, dtype, device.type == "cuda")
    if device.type == "cuda":
        return torch.as_tensor(memory, device=device)
    return torch.from_numpy(np.asarray(memory))


class FakeEngine:
    """A plan whose tensors are declared by `tensors` (name -> (mode, dtype, dims)) and whose
    `kernel` computes the outputs from the inputs, in the memory bound to each."""

    def __init__(self, rec: Recorder, tensors: dict[str, tuple], kernel: Any,
                 device: torch.device, profiles: int = 1,
                 memory: tuple[int, ...] = (1024,)) -> None:  # fmt: skip
        self.rec, self.tensors, self.kernel, self.device = rec, tensors, kernel, device
        self.num_io_tensors, self.num_optimization_profiles = len(tensors), profiles
        self.memory = memory

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.tensors[name][0]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.tensors[name][1]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][2]

    def get_device_memory_size_for_profile_v2(self, profile: int) -> int:
        return self.memory[profile]

    def create_execution_context(self, strategy: Any = AllocationStrategy.STATIC) -> FakeContext:
        self.rec.calls.append(("context", strategy, self.rec.current_device()))
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_optimization_profile_async(self, profile: int, stream: int) -> bool:
        self.engine.rec.calls.append(("profile_selected", profile))
        return True

    def set_device_memory(self, address: int, size: int) -> None:
        self.engine.rec.calls.append(("device_memory", address, size))

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.engine.kernel.output_shape(name, self.shapes)

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name == self.engine.rec.refused_address:
            return False
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        """Run the kernel on `stream`, as TensorRT enqueues its kernels there."""
        engine = self.engine
        with _on_stream(engine.device, stream):
            inputs = {name: self._view(name, shape) for name, shape in self.shapes.items()}
            for name, values in engine.kernel.outputs(inputs).items():
                self._view(name, tuple(values.shape)).copy_(values)
        engine.rec.calls.append(("execute", stream, engine.rec.current_device()))
        return True

    def _view(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        dtype = self.engine.tensors[name][1].value
        return view(self.addresses[name], shape, dtype, self.engine.device)


def _on_stream(device: torch.device, handle: int) -> Any:
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.stream(torch.cuda.ExternalStream(handle, device=device))


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

        def create_timing_cache(self, data: bytes) -> TimingCache | None:
            rec.calls.append(("timing_cache_in", data))
            if data and not rec.cache_readable:
                return None  # what TensorRT gives for a corrupt file
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

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.engine_host_code_allowed = False
            rec.runtimes.append(self)

        def deserialize_cuda_engine(self, data: bytes) -> Any:
            rec.calls.append(("deserialize", data, self.engine_host_code_allowed))
            rec.calls.append(("deserialized_on", rec.current_device()))
            return rec.engine

    trt.ILogger = ILogger
    trt.Logger = Logger
    trt.Runtime = Runtime
    trt.DataType = DataType
    trt.TensorIOMode = TensorIOMode
    trt.ExecutionContextAllocationStrategy = AllocationStrategy
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


# -- plans the runtime side runs --------------------------------------------------------------
class SumKernel:
    """Encoder: output row b is sum(input_ids[b] * attention_mask[b]) + [0, 1, 2, 3]."""

    def output_shape(self, name: str, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
        return (shapes["input_ids"][0], 4)

    def outputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids = inputs["input_ids"]
        total = (ids.long() * inputs["attention_mask"]).sum(dim=1, keepdim=True)
        return {"embedding": total + torch.arange(4, device=ids.device)}


def encoder_engine(rec: Recorder, output_dtype: DataType, device: torch.device) -> FakeEngine:
    tensors = {
        "input_ids": (TensorIOMode.INPUT, DataType.INT32, (-1, -1)),
        "attention_mask": (TensorIOMode.INPUT, DataType.INT64, (-1, -1)),
        "embedding": (TensorIOMode.OUTPUT, output_dtype, (-1, 4)),
    }
    return FakeEngine(rec, tensors, SumKernel(), device)


VOCAB, KV_HEADS, HEAD_DIM, LAYERS = 5, 2, 3, 2


class DecoderKernel:
    """Logits row b is input_ids[b, -1] * 10 + [0..VOCAB); each present is its past with one
    position per new token appended, filled with that token's id."""

    def output_shape(self, name: str, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
        raise AssertionError("the decoder sizes its outputs itself")

    def outputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids = inputs["input_ids"]
        logits = ids[:, -1:] * 10 + torch.arange(VOCAB, device=ids.device)
        out = {"logits": logits.float()}
        for past, present in zip(past_names(LAYERS), present_names(LAYERS), strict=True):
            cache = inputs[past]
            new = ids[:, None, :, None].expand(ids.shape[0], KV_HEADS, ids.shape[1], HEAD_DIM)
            out[present] = torch.cat([cache, new.to(cache.dtype)], dim=2)
        return out


def decoder_engine(rec: Recorder, cache_dtype: DataType, device: torch.device) -> FakeEngine:
    tensors: dict[str, tuple] = {
        name: (TensorIOMode.INPUT, DataType.INT64, (-1, -1))
        for name in ("input_ids", "attention_mask", "position_ids")
    }
    cache = (-1, KV_HEADS, -1, HEAD_DIM)
    for name in past_names(LAYERS):
        tensors[name] = (TensorIOMode.INPUT, cache_dtype, cache)
    tensors["logits"] = (TensorIOMode.OUTPUT, DataType.FLOAT, (-1, VOCAB))
    for name in present_names(LAYERS):
        tensors[name] = (TensorIOMode.OUTPUT, cache_dtype, cache)
    return FakeEngine(rec, tensors, DecoderKernel(), device, profiles=2, memory=(4096, 1536))


def install(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType, Recorder]:
    """Put the fake in place of `tensorrt` and import `tritonize.engine.tensorrt` and
    `tritonize.triton_models.tensorrt_decoder` against it (monkeypatch undoes all of it)."""
    rec = Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(rec))
    modules = []
    for name in ("tritonize.engine.tensorrt", "tritonize.triton_models.tensorrt_decoder"):
        monkeypatch.setitem(sys.modules, name, None)  # undo: the module as it was, or none
        del sys.modules[name]
        modules.append(importlib.import_module(name))
    return modules[0], modules[1], rec
