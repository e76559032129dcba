"""ONNX -> TensorRT plan with the TensorRT 10 Python API, and a runner for the accuracy gate.

Needs `tensorrt` and a CUDA GPU: import this module only after `require_tensorrt()`.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorrt as trt

from tritonize.engine.profiles import TensorProfile
from tritonize.errors import EngineError
from tritonize.progress import note
from tritonize.spec import BuildSpec, HardwareCompatibility, Precision

if TYPE_CHECKING:
    import torch

DEFAULT_TIMING_CACHE = Path.home() / ".cache" / "tritonize" / "tensorrt-timing.cache"

_HARDWARE = {
    HardwareCompatibility.NONE: trt.HardwareCompatibilityLevel.NONE,
    HardwareCompatibility.AMPERE_PLUS: trt.HardwareCompatibilityLevel.AMPERE_PLUS,
    HardwareCompatibility.SAME_COMPUTE_CAPABILITY: (
        trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
    ),
}


class _Logger(trt.ILogger):
    """Shows warnings as progress notes and keeps errors for the exception message."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        self.errors: list[str] = []

    def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
        errors = (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR)
        if severity in errors:
            self.errors.append(msg)
        if severity in (*errors, trt.ILogger.Severity.WARNING):
            note(f"TensorRT: {msg}")


class _BuildProgress(trt.IProgressMonitor):
    """Prints the builder's top phases and, at most every 10 s, where it is."""

    def __init__(self) -> None:
        trt.IProgressMonitor.__init__(self)
        self._last = time.monotonic()

    def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
        if not parent_phase:
            note(f"TensorRT phase: {phase_name} ({num_steps} steps)")

    def step_complete(self, phase_name: str, step: int) -> bool:
        if time.monotonic() - self._last > 10:
            self._last = time.monotonic()
            note(f"TensorRT: {phase_name}, step {step + 1}")
        return True  # keep building

    def phase_finish(self, phase_name: str) -> None:
        pass


@dataclass(frozen=True)
class PlanBuild:
    plan: Path
    seconds: float
    tensorrt_version: str


def build_plan(
    onnx_path: Path, plan_path: Path, spec: BuildSpec, profiles: list[TensorProfile]
) -> PlanBuild:
    """Parse the ONNX graph into a strongly typed network and build a serialized plan with
    one optimisation profile per entry of `profiles` (input name -> min, opt, max)."""
    start = time.perf_counter()
    logger = _Logger()
    builder = trt.Builder(logger)
    # Strongly typed: every tensor keeps the dtype the ONNX graph declares. TensorRT 10.12
    # deprecated the weak-typing precision flags and TensorRT 11 removes them, so fp16/bf16 are
    # set in the graph itself (engine/precision.py), with norms and softmax kept in fp32.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f"TensorRT cannot parse `{onnx_path}`:\n  - " + "\n  - ".join(errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mib << 20)
    config.builder_optimization_level = spec.builder_optimization_level
    config.progress_monitor = _BuildProgress()
    if spec.precision is Precision.FP32:
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32, not TF32 matmuls
    config.hardware_compatibility_level = _HARDWARE[spec.hardware_compatibility]
    if spec.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)

    for profile in profiles:
        optimization = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.items():
            optimization.set_shape(name, *(trt.Dims(list(dims)) for dims in (low, opt, high)))
        config.add_optimization_profile(optimization)

    cache_path = spec.timing_cache or DEFAULT_TIMING_CACHE
    cache = _attach_timing_cache(config, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(
            "TensorRT could not build the engine:\n  - " + "\n  - ".join(logger.errors)
        )
    write_atomically(cache_path, bytes(cache.serialize()))
    plan_path.write_bytes(bytes(serialized))
    return PlanBuild(plan_path, time.perf_counter() - start, trt.__version__)


def _attach_timing_cache(config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache:
    """Reuse tactic timings from earlier builds; start afresh if the file does not fit."""
    data = path.read_bytes() if path.exists() else b""
    if not data:
        note(f"timing cache: {path} is new")
        return _empty_timing_cache(config)
    cache = config.create_timing_cache(data)
    if cache is None:  # TensorRT's answer to a corrupt or truncated file
        note(f"timing cache {path} is unreadable (corrupt or truncated): starting a new one")
        return _empty_timing_cache(config)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        note(f"timing cache {path} was made by another TensorRT or GPU: starting a new one")
        return _empty_timing_cache(config)
    note(f"timing cache: {path} ({len(data)} bytes reused)")
    return cache


def _empty_timing_cache(config: trt.IBuilderConfig) -> trt.ITimingCache:
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineError("TensorRT cannot create an empty timing cache")
    return cache


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` by a complete file in one step: concurrent builds share the cache volume,
    and a reader must see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(data)
    try:
        os.replace(f.name, path)
    except OSError:
        os.unlink(f.name)
        raise


class PlanRunner:
    """Runs a serialized plan with PyTorch tensors on `device` as buffers (the CPU stands in
    for the GPU in unit tests)."""

    def __init__(self, plan: Path, device: torch.device | None = None) -> None:
        import torch

        from tritonize.triton_models.tensorrt_decoder import on_device

        self._torch = torch
        self.device = device or torch.device("cuda", 0)
        self._streams = torch.get_device_module(self.device.type)
        self.logger = _Logger()
        with on_device(self.device):
            self.runtime = trt.Runtime(self.logger)
            # A version-compatible plan carries its lean runtime as host code; this plan was
            # just built here.
            self.runtime.engine_host_code_allowed = True
            engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
            if engine is None:
                raise EngineError(f"TensorRT cannot deserialize `{plan}`: {self.logger.errors}")
            self.engine = engine
            self.context = engine.create_execution_context()
            self.stream = self._streams.Stream()  # one stream for every run
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def run(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """The plan's output for the graph's inputs by name (input_ids, attention_mask, ...)."""
        from tritonize.triton_models.tensorrt_decoder import on_device, stream_handle

        with on_device(self.device):
            feeds = self._feeds(arrays)
            # The inputs were copied on PyTorch's current stream: run after those copies.
            self.stream.wait_stream(self._streams.current_stream())
            with self._streams.stream(self.stream):
                self._bind_inputs(feeds)
                output = self._output()
                if not self.context.execute_async_v3(stream_handle(self.stream)):
                    raise EngineError(f"TensorRT execution failed: {self.logger.errors}")
                host = output.cpu()  # waits for the run
        return host.float().numpy()

    def _feeds(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        from tritonize.triton_models.tensorrt_decoder import torch_dtype

        return {
            name: self._torch.from_numpy(array)
            .to(self.device, torch_dtype(self.engine, name))
            .contiguous()
            for name, array in arrays.items()
        }

    def _bind_inputs(self, feeds: dict[str, torch.Tensor]) -> None:
        from tritonize.triton_models.tensorrt_decoder import bind

        for name, tensor in feeds.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise EngineError(
                    f"`{name}` of shape {tuple(tensor.shape)} is outside the plan's profile"
                )
            bind(self.context, name, tensor)

    def _output(self) -> torch.Tensor:
        """The one output, allocated with the shape and dtype the engine gives it."""
        from tritonize.triton_models.tensorrt_decoder import bind, torch_dtype

        (name,) = self.outputs
        dims = self.context.get_tensor_shape(name)
        shape = [dims[i] for i in range(len(dims))]
        output = self._torch.empty(shape, dtype=torch_dtype(self.engine, name), device=self.device)
        bind(self.context, name, output)
        return output
