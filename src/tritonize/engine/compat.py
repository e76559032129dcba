"""Will a TensorRT plan load here? Compare its manifest with the TensorRT and GPUs at hand.

A plan only deserializes under the TensorRT version that built it (unless built
version-compatible) and on the compute capability it was built for (unless built with a
hardware-compatibility level). Triton's own error for either is cryptic; this names both sides
and the command that rebuilds the plan.
"""

from __future__ import annotations

import ctypes
import shlex
import subprocess
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EngineRuntime:
    """The TensorRT version and GPU compute capabilities a plan would be loaded with."""

    tensorrt_version: str | None
    compute_capabilities: tuple[str, ...] = ()

    @classmethod
    def detect(cls) -> EngineRuntime:
        return cls(runtime_tensorrt_version(), compute_capabilities())

    @property
    def known(self) -> bool:
        return self.tensorrt_version is not None and bool(self.compute_capabilities)


def plan_problems(where: str, manifest: dict[str, Any], runtime: EngineRuntime) -> list[str]:
    """Why the plan described by `manifest` would not load on `runtime` (empty if it would)."""
    built = manifest.get("tensorrt") or {}
    version, capability = built.get("version"), built.get("compute_capability")
    if not version or not capability:
        return [f"{where}: manifest.json does not say which TensorRT and GPU built the plan"]
    problems = []
    if runtime.tensorrt_version and not _version_loads(
        version, runtime.tensorrt_version, built.get("version_compatible", False)
    ):
        problems.append(
            f"{where}: plan built with TensorRT {version}, runtime has TensorRT "
            f"{runtime.tensorrt_version}"
        )
    level = built.get("hardware_compatibility", "none")
    unusable = [c for c in runtime.compute_capabilities if not _gpu_loads(capability, c, level)]
    if unusable:
        problems.append(
            f"{where}: plan built for compute capability {capability} "
            f"(hardware compatibility `{level}`), runtime GPU has {', '.join(unusable)}"
        )
    if problems:
        problems[-1] += (
            f"; rebuild it with the serving image's TensorRT: {rebuild_command(manifest)}"
        )
    return problems


def rebuild_command(manifest: dict[str, Any]) -> str:
    """The build command that recreates this engine inside the compose `build` service."""
    spec = manifest.get("spec", {})
    args = ["docker", "compose", "run", "--rm", "build", "tritonize", "build"]
    keys = (
        "model",
        "task",
        "name",
        "target",
        "precision",
        "max_batch_size",
        "max_seq_len",
        "output",
    )
    for key in keys:
        if spec.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(spec[key])]
    return shlex.join(args)


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def _version_loads(built: str, runtime: str, version_compatible: bool) -> bool:
    if version_compatible:  # runs on the same major release, this version or later
        return _release(runtime)[:1] == _release(built)[:1] and _release(runtime) >= _release(built)
    return _release(runtime) == _release(built)


def _gpu_loads(built: str, runtime: str, level: str) -> bool:
    if level == "ampere_plus":
        return float(runtime) >= 8.0
    return float(runtime) == float(built)


def python_tensorrt_version() -> str | None:
    """The version of the importable `tensorrt` Python package, if there is a real one."""
    try:
        import tensorrt
    except ImportError:
        return None
    version = getattr(tensorrt, "__version__", None)  # a stubs-only directory has none
    return str(version) if version else None


def runtime_tensorrt_version() -> str | None:
    """The TensorRT a plan would load under: the Python package's, else the library's."""
    version = python_tensorrt_version()
    if version:
        return version
    # The Triton image has the TensorRT library but not its Python bindings.
    for name in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"):
        try:
            number = int(ctypes.CDLL(name).getInferLibVersion())
        except (OSError, AttributeError):
            continue
        return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    return None


def compute_capabilities() -> tuple[str, ...]:
    """Compute capabilities of the visible NVIDIA GPUs (empty without a GPU)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(sorted({line.strip() for line in out.splitlines() if line.strip()}))
