"""GPU tier: needs an NVIDIA GPU and CUDA PyTorch; all but `test_cuda_*.py` also need the
`tensorrt` Python package (those run TensorRT's stand-in, tests/fake_tensorrt.py, on CUDA
memory, so that a CUDA machine without TensorRT checks the CUDA plumbing in minutes).

Everything here is skipped, with the reason, on a machine without them.
Run them all on a GPU host with `scripts/gpu-checks.sh`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from tritonize.engine.compat import compute_capabilities, python_tensorrt_version


@functools.cache
def missing_cuda() -> str | None:
    if not compute_capabilities():
        return "no NVIDIA GPU is visible (nvidia-smi)"
    import torch

    if not torch.cuda.is_available():
        return "PyTorch has no CUDA"
    return None


@functools.cache
def missing_tensorrt() -> str | None:
    if python_tensorrt_version() is None:
        return "the `tensorrt` Python package is not installed"
    return missing_cuda()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if "tests/gpu" not in path.as_posix():
            continue
        item.add_marker(pytest.mark.gpu)
        reason = missing_cuda() if path.name.startswith("test_cuda_") else missing_tensorrt()
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"GPU test: {reason}"))
