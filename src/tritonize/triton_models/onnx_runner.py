"""Engine step for target `local`: ONNX Runtime inside a Python-backend model.

The dynamic batcher hands over several requests at once, each padded to its own length
(the inputs are declared ragged, so requests of any length merge). They are padded to the
longest, run as one ONNX Runtime call, and the output rows are split back per request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .common import ATTENTION_MASK, INPUT_IDS, error_responses, model_parameters, version_dir

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: the logic below stays importable and testable
    pb_utils = None


def pad_and_stack(
    batches: list[tuple[np.ndarray, np.ndarray]], pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stack `[b_i, L_i]` id/mask pairs into `[sum b_i, max L_i]`, padding on the right."""
    width = max(ids.shape[1] for ids, _ in batches)
    rows = sum(ids.shape[0] for ids, _ in batches)
    input_ids = np.full((rows, width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((rows, width), dtype=np.int64)
    start = 0
    for ids, mask in batches:
        input_ids[start : start + len(ids), : ids.shape[1]] = ids
        attention_mask[start : start + len(ids), : mask.shape[1]] = mask
        start += len(ids)
    return input_ids, attention_mask


class OnnxEncoder:
    """One ONNX Runtime session over the exported graph."""

    def __init__(self, path: Path, output_name: str, pad_id: int, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.output_name = output_name
        self.pad_id = pad_id

    def run(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """One session call for all batches; the outputs split back per batch."""
        input_ids, attention_mask = pad_and_stack(batches, self.pad_id)
        feeds = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        (output,) = self.session.run([self.output_name], feeds)
        splits = np.cumsum([ids.shape[0] for ids, _ in batches])[:-1]
        return np.split(output.astype(np.float32, copy=False), splits)


class TritonPythonModel:
    """Thin adapter: tensors in, tensors out, errors as responses."""

    def initialize(self, args: dict[str, str]) -> None:
        params = model_parameters(args)
        self.name = args["model_name"]
        self.encoder = OnnxEncoder(
            version_dir(args) / "model.onnx",
            output_name=params["output_name"],
            pad_id=int(params["pad_token_id"]),
            threads=int(params.get("intra_op_threads", "0")),
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            batches = [
                (
                    pb_utils.get_input_tensor_by_name(r, INPUT_IDS).as_numpy(),
                    pb_utils.get_input_tensor_by_name(r, ATTENTION_MASK).as_numpy(),
                )
                for r in requests
            ]
            outputs = self.encoder.run(batches)
        except Exception as exc:  # answer every request rather than crash the stub
            pb_utils.Logger.log_error(f"{self.name}: {exc!r}")
            return error_responses(pb_utils, len(requests), f"engine failed: {exc}")
        name = self.encoder.output_name
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, out)])
            for out in outputs
        ]
