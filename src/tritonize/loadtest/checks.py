"""Checks of every response a load test gets: a bad one counts as a failure, not a success."""

from __future__ import annotations

from typing import Any

import numpy as np

from tritonize.triton_models.common import EMBEDDING


def response_problem(
    outputs: dict[str, np.ndarray], rows: int, metadata: dict[str, Any]
) -> str | None:
    """What is wrong with `outputs` for a request of `rows` texts, or None if nothing is."""
    declared = {o["name"]: [int(d) for d in o["shape"]] for o in metadata["outputs"]}
    for name, dims in declared.items():
        value = outputs.get(name)
        if value is None:
            return f"output `{name}` is missing"
        expected = [rows, *dims[1:]]  # dims[0] is the batch dimension (-1)
        if len(value.shape) != len(expected) or any(
            want not in (-1, got) for want, got in zip(expected, value.shape, strict=True)
        ):
            return f"output `{name}` has shape {list(value.shape)}, expected {expected}"
        if value.dtype.kind in "OSU":  # BYTES
            if any(not item for item in value.reshape(-1)):
                return f"output `{name}` has an empty string"
        elif not np.isfinite(value).all():
            return f"output `{name}` has non-finite values"
    if EMBEDDING in outputs:
        norms = np.linalg.norm(outputs[EMBEDDING], axis=1)
        if not np.allclose(norms, 1.0, atol=1e-3):
            spread = f"{norms.min():.4f}..{norms.max():.4f}"
            return f"output `{EMBEDDING}` is not L2-normalised (norms {spread})"
    return None
