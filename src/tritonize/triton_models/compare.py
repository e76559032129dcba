"""Whether two builds answered one request alike: texts, labels and flags equal; numbers
within a cosine of `MIN_COSINE` per row. Used by a canary's router on live requests and by
`rollout` on golden records and sample texts."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

MIN_COSINE = 0.99  # float outputs of one input agree when their rows point the same way


def disagreement(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> str | None:
    """The first output (by name) on which `a` and `b` differ, in words; None if they agree."""
    for name in sorted(a.keys() & b.keys()):
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape:
            return f"`{name}` shapes {list(x.shape)} vs {list(y.shape)}"
        if x.dtype.kind == "f":
            rows_x, rows_y = x.reshape(max(len(x), 1), -1), y.reshape(max(len(y), 1), -1)
            cosine = min_cosine(rows_x.astype(np.float64), rows_y.astype(np.float64))
            if cosine < MIN_COSINE:
                return f"`{name}` cosine {cosine:.4f}"
        elif not np.array_equal(x, y):
            return f"`{name}` {_short(x)} vs {_short(y)}"
    return None


def min_cosine(x: np.ndarray, y: np.ndarray) -> float:
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    dots = np.sum(x * y, axis=1)
    # Two zero rows agree; one zero row does not.
    cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), np.all(x == y, axis=1))
    return float(cosines.min()) if cosines.size else 1.0


def _short(values: np.ndarray) -> str:
    flat = [v.decode() if isinstance(v, bytes) else v for v in values.reshape(-1)[:3].tolist()]
    return repr(flat)
