"""The decoder as a TensorRT plan on the GPU, behind `DecoderRuntime` (decoding.py).

The plan has two optimisation profiles (engine/profiles.py `DecoderProfiles`): 0 prefills
prompts, 1 decodes one token for many sequences. Each profile has its own
execution context, so switching between them costs nothing. Caches are CUDA tensors of PyTorch:
the presents of a step are bound as the next step's pasts without leaving the GPU, and only the
last position's logits are copied to the host.

Needs `tensorrt` and CUDA PyTorch in the serving image (see docker/triton.Dockerfile).
"""

from __future__ import annotations

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


class TensorRTDecoderRuntime:
    """Runs the decoder plan; its arrays are torch CUDA tensors on `device`."""

    def __init__(self, plan: Path, device: int = 0) -> None:
        self.device = torch.device("cuda", device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
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
        self.engine = engine
        self.stream = torch.cuda.Stream(self.device)
        self.contexts = [engine.create_execution_context() for _ in (PREFILL, DECODE)]
        for profile, context in enumerate(self.contexts):
            context.set_optimization_profile_async(profile, self.stream.cuda_stream)
        self.layers = count_layers(engine.get_tensor_name(i) for i in range(engine.num_io_tensors))
        self.past_names, self.present_names = past_names(self.layers), present_names(self.layers)
        cache_shape = engine.get_tensor_shape(self.past_names[0])  # [-1, kv_heads, -1, head_dim]
        self.kv_heads, self.head_dim = int(cache_shape[1]), int(cache_shape[3])
        self.vocab = int(engine.get_tensor_shape("logits")[1])
        self.cache_dtype = self._dtype(self.past_names[0])

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
        # The caches were re-packed on PyTorch's current stream: run after that work.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            feeds = {
                name: torch.from_numpy(array).to(self.device, self._dtype(name))
                for name, array in (
                    ("input_ids", input_ids),
                    ("attention_mask", attention_mask),
                    ("position_ids", position_ids),
                )
            }
            feeds.update(zip(self.past_names, past, strict=True))
            for name, tensor in feeds.items():
                if not context.set_input_shape(name, tuple(tensor.shape)):
                    raise RuntimeError(
                        f"`{name}` of shape {tuple(tensor.shape)} is outside the plan's profile"
                    )
                context.set_tensor_address(name, tensor.data_ptr())
            batch, total = attention_mask.shape
            logits = torch.empty((batch, self.vocab), dtype=torch.float32, device=self.device)
            presents = [
                torch.empty((batch, self.kv_heads, total, self.head_dim), dtype=self.cache_dtype,
                            device=self.device)
                for _ in self.present_names
            ]  # fmt: skip
            outputs = zip(["logits", *self.present_names], [logits, *presents], strict=True)
            for name, tensor in outputs:
                context.set_tensor_address(name, tensor.data_ptr())
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT could not run the decoder plan (see the server log)")
            host_logits = logits.cpu()  # waits for the step
        return host_logits.numpy(), presents

    def _dtype(self, name: str) -> torch.dtype:
        return _TORCH_TYPES[self.engine.get_tensor_dtype(name)]
