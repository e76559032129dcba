"""GPU tier: needs an NVIDIA GPU, the `tensorrt` Python package and CUDA PyTorch.

Everything here is skipped, with the reason, on a machine without them.
Run them all on a GPU host with `scripts/gpu-checks.sh`.
"""

from __future__ import annotations

import pytest

from tritonize.engine.compat import compute_capabilities, python_tensorrt_version


def missing() -> str | None:
    if python_tensorrt_version() is None:
        return "the `tensorrt` Python package is not installed"
    if not compute_capabilities():
        return "no NVIDIA GPU is visible (nvidia-smi)"
    import torch

    if not torch.cuda.is_available():
        return "PyTorch has no CUDA"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = None
    checked = False
    for item in items:
        if "tests/gpu" not in str(item.fspath):
            continue
        item.add_marker(pytest.mark.gpu)
        if not checked:
            reason, checked = missing(), True
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"GPU test: {reason}"))
