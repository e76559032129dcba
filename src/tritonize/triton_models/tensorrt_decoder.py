"""The decoder as a TensorRT plan on the GPU, behind `DecoderRuntime` (decoding.py).

The plan has two optimisation profiles (engine/profiles.py `DecoderProfiles`): 0 prefills
prompts, 1 decodes one token for many sequences. Each profile has its own
execution context, so switching between them costs nothing. Caches are CUDA tensors of PyTorch:
the presents of a step are bound as the next step's pasts without leaving the GPU, and only the
last position's logits are copied to the host.

Needs `tensorrt` and CUDA PyTorch in the serving image (see docker/triton.Dockerfile).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorrt as trt
import torch

from .decoding import count_layers, past_names, present_names

PREFILL, DECODE = 0, 1  # optimisation profile indices, in the order the build adds them

_TORCH_TYPES = {
    trt.DataType.FLOAT: torch.float32,
    trt.DataType.HALF: torch.float16,
    trt.DataType.BF16: torch.bfloat16,
    trt.DataType.INT32: torch.int32,
    trt.DataType.INT64: torch.int64,
}


def torch_dtype(engine: trt.ICudaEngine, name: str) -> torch.dtype:
    """The PyTorch dtype of the plan's tensor `name`, as the engine declares it."""
    dtype = engine.get_tensor_dtype(name)
    if dtype not in _TORCH_TYPES:
        raise RuntimeError(f"tensor `{name}` of the plan has dtype {dtype}, which is not served")
    return _TORCH_TYPES[dtype]


def bind(context: trt.IExecutionContext, name: str, tensor: torch.Tensor) -> None:
    """Point the plan's tensor `name` at `tensor`; TensorRT refuses a misaligned address or an
    unknown name by returning False, which would otherwise run on a stale address."""
    if not context.set_tensor_address(name, tensor.data_ptr()):
        raise RuntimeError(f"TensorRT refused the address of tensor `{name}`")


@contextlib.contextmanager
def on_device(device: torch.device) -> Iterator[None]:
    """Make `device` current, so that TensorRT (which works on the current CUDA device) puts
    engines, contexts and their memory beside the tensors. Triton places instances on every
    GPU, while the current device stays 0."""
    if device.type != "cuda":  # the CPU stands in for a GPU in unit tests
        yield
        return
    with torch.cuda.device(device):
        yield


def stream_handle(stream: object) -> int:
    """The CUDA stream TensorRT enqueues on (0, the default stream, for the CPU stand-in)."""
    return int(getattr(stream, "cuda_stream", 0))


class TensorRTDecoderRuntime:
    """Runs the decoder plan; its arrays are torch CUDA tensors on `device`."""

    def __init__(self, plan: Path, device: int | torch.device = 0) -> None:
        self.device = torch.device("cuda", device) if isinstance(device, int) else device
        self._streams = torch.get_device_module(self.device.type)
        self.logger = trt.Logger(trt.Logger.WARNING)
        with on_device(self.device):
            self.runtime = trt.Runtime(self.logger)
            # A version-compatible plan carries its lean runtime as host code. Whoever can
            # place a plan in the repository can place model.py there too: no trust is added.
            self.runtime.engine_host_code_allowed = True
            self.engine = self._deserialize(plan)
            self.stream = self._streams.Stream()
            self.contexts, self._workspace = self._contexts()
        self.layers = count_layers(
            self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)
        )
        self.past_names, self.present_names = past_names(self.layers), present_names(self.layers)
        cache_shape = self.engine.get_tensor_shape(self.past_names[0])  # [-1, kv_heads, -1, dim]
        self.kv_heads, self.head_dim = int(cache_shape[1]), int(cache_shape[3])
        self.vocab = int(self.engine.get_tensor_shape("logits")[1])
        self.cache_dtype = torch_dtype(self.engine, self.past_names[0])

    def _deserialize(self, plan: Path) -> trt.ICudaEngine:
        engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise RuntimeError(
                f"TensorRT cannot deserialize `{plan}`: it was built by another TensorRT or for "
                "another GPU (`tritonize check` says which; rebuild it with the serving image)"
            )
        if engine.num_optimization_profiles != 2:
            raise RuntimeError(
                f"`{plan}` has {engine.num_optimization_profiles} optimisation profile(s): a "
                "decoder plan has 2 (prefill, decode); rebuild it with `--task generation`"
            )
        return engine

    def _contexts(self) -> tuple[list[trt.IExecutionContext], torch.Tensor]:
        """One context per profile, sharing one workspace sized for the larger profile: both
        run on `self.stream`, one after the other, so they never use it at the same time."""
        engine = self.engine
        size = max(engine.get_device_memory_size_for_profile_v2(p) for p in (PREFILL, DECODE))
        workspace = torch.empty(size, dtype=torch.uint8, device=self.device)  # 256-byte aligned
        contexts = []
        for profile in (PREFILL, DECODE):
            context = engine.create_execution_context(
                trt.ExecutionContextAllocationStrategy.USER_MANAGED
            )
            context.set_device_memory(workspace.data_ptr(), size)
            if not context.set_optimization_profile_async(profile, stream_handle(self.stream)):
                raise RuntimeError(f"TensorRT cannot select optimisation profile {profile}")
            contexts.append(context)
        return contexts, workspace

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, dtype=self.cache_dtype, device=self.device)

    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[torch.Tensor],
    ) -> tuple[np.ndarray, list[torch.Tensor]]:
        # One new token per sequence fits the decode profile (a one-token prompt too).
        context = self.contexts[PREFILL if input_ids.shape[1] > 1 else DECODE]
        with on_device(self.device):
            # The caches were re-packed on PyTorch's current stream: run after that work.
            self.stream.wait_stream(self._streams.current_stream())
            with self._streams.stream(self.stream):
                feeds = self._feeds(input_ids, attention_mask, position_ids, past)
                self._bind_inputs(context, feeds)
                logits, presents = self._outputs(context, attention_mask.shape)
                if not context.execute_async_v3(stream_handle(self.stream)):
                    raise RuntimeError("TensorRT could not run the decoder plan (see the log)")
                host_logits = logits.cpu()  # waits for the step
        return host_logits.numpy(), presents

    def _feeds(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        arrays = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "position_ids": position_ids}  # fmt: skip
        feeds = {
            name: torch.from_numpy(array).to(self.device, torch_dtype(self.engine, name))
            for name, array in arrays.items()
        }
        feeds.update(zip(self.past_names, past, strict=True))
        # Bound by address: each must be contiguous and stay referenced until the step ends.
        return {name: tensor.contiguous() for name, tensor in feeds.items()}

    def _bind_inputs(self, context: trt.IExecutionContext, feeds: dict[str, torch.Tensor]) -> None:
        for name, tensor in feeds.items():
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise RuntimeError(
                    f"`{name}` of shape {tuple(tensor.shape)} is outside the plan's profile"
                )
            bind(context, name, tensor)

    def _outputs(
        self, context: trt.IExecutionContext, mask_shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, total = mask_shape
        logits = torch.empty(
            (batch, self.vocab), dtype=torch_dtype(self.engine, "logits"), device=self.device
        )
        presents = [
            torch.empty((batch, self.kv_heads, total, self.head_dim),
                        dtype=torch_dtype(self.engine, name), device=self.device)
            for name in self.present_names
        ]  # fmt: skip
        for name, tensor in zip(["logits", *self.present_names], [logits, *presents], strict=True):
            bind(context, name, tensor)
        return logits, presents
