"""ONNX -> TensorRT plan with the TensorRT 10 Python API, and a runner for the accuracy gate.

Needs `tensorrt` and a CUDA GPU: import this module only after `require_tensorrt()`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorrt as trt

from tritonize.engine.profiles import TensorProfile
from tritonize.errors import EngineError
from tritonize.progress import note
from tritonize.spec import BuildSpec, HardwareCompatibility, Precision
from tritonize.triton_models.common import ATTENTION_MASK, INPUT_IDS

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
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(bytes(cache.serialize()))
    plan_path.write_bytes(bytes(serialized))
    return PlanBuild(plan_path, time.perf_counter() - start, trt.__version__)


def _attach_timing_cache(config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache:
    """Reuse tactic timings from earlier builds; start afresh if the file does not fit."""
    data = path.read_bytes() if path.exists() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        note(f"timing cache {path} was made by another TensorRT or GPU: starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    else:
        note(f"timing cache: {path} ({len(data)} bytes reused)")
    return cache


class PlanRunner:
    """Runs a serialized plan on the GPU with PyTorch CUDA tensors as buffers."""

    def __init__(self, plan: Path) -> None:
        import torch

        self._torch = torch
        self.logger = _Logger()
        self.runtime = trt.Runtime(self.logger)
        engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise EngineError(f"TensorRT cannot deserialize `{plan}`: {self.logger.errors}")
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        feeds = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        keep = []
        for name, array in feeds.items():
            dtype = torch.int32 if self.engine.get_tensor_dtype(name) == trt.int32 else torch.int64
            tensor = torch.from_numpy(array).to(device="cuda", dtype=dtype).contiguous()
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
            keep.append(tensor)
        (output_name,) = self.outputs
        dims = self.context.get_tensor_shape(output_name)
        shape = [dims[i] for i in range(len(dims))]
        output = torch.empty(shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(output_name, output.data_ptr())
        stream = torch.cuda.Stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"TensorRT execution failed: {self.logger.errors}")
        stream.synchronize()
        return output.cpu().numpy()
