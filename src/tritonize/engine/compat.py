"""Will a TensorRT plan load here? Compare its manifest with the TensorRT and GPUs at hand.

A plan only deserializes under the exact TensorRT build that made it (all four parts of the
version: same-tag images have differed in the fourth) unless built version-compatible, and on
the compute capability it was built for unless built with a hardware-compatibility level.
Triton's own error for either is cryptic; this names both sides and the command that rebuilds
the plan.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import subprocess
from dataclasses import dataclass
from typing import Any

from tritonize.tasks import TASKS

# Set where Triton runs with `--backend-config=tensorrt,version-compatible=true`: its TensorRT
# backend refuses version-compatible plans (their lean runtime is host code) without it.
VERSION_COMPATIBLE_ENV = "TRITONIZE_TENSORRT_VERSION_COMPATIBLE"
TRITON_VERSION_COMPATIBLE_FLAG = "--backend-config=tensorrt,version-compatible=true"

# TensorRT's documented cross-version rules for version-compatible plans (from 8.6 on): later
# runtimes of the same major, and TensorRT 8 -> 9, 10 and 10 -> 11 across majors.
_FIRST_VERSION_COMPATIBLE = (8, 6)
_LOADING_MAJORS = {8: (8, 9, 10), 9: (9, 10), 10: (10, 11)}


@dataclass(frozen=True)
class EngineRuntime:
    """The TensorRT version and GPU compute capabilities a plan would be loaded with, and
    whether Triton's TensorRT backend there accepts version-compatible plans."""

    tensorrt_version: str | None
    compute_capabilities: tuple[str, ...] = ()
    version_compatible_allowed: bool = False

    @classmethod
    def detect(cls) -> EngineRuntime:
        allowed = os.environ.get(VERSION_COMPATIBLE_ENV, "").lower() in ("1", "true", "yes")
        return cls(runtime_tensorrt_version(), compute_capabilities(), allowed)

    @property
    def known(self) -> bool:
        return self.tensorrt_version is not None and bool(self.compute_capabilities)


def plan_problems(where: str, manifest: dict[str, Any], runtime: EngineRuntime) -> list[str]:
    """Why the plan described by `manifest` would not load on `runtime` (empty if it would)."""
    built = manifest.get("tensorrt") or {}
    version, capability = built.get("version"), built.get("compute_capability")
    if not version or not capability:
        return [f"{where}: manifest.json does not say which TensorRT and GPU built the plan"]
    if runtime.tensorrt_version is None:
        return [
            f"{where}: the plan needs TensorRT {version}, but the TensorRT version here cannot be "
            "read (no `tensorrt` package, no libnvinfer): run `tritonize check` where the plan "
            "is served"
        ]
    mismatches = [
        problem
        for problem in (_version_mismatch(built, runtime), _gpu_mismatch(built, runtime))
        if problem
    ]
    if mismatches:
        mismatches[-1] += (
            f"; rebuild it with the serving image's TensorRT: {rebuild_command(manifest)}"
        )
    problems = [f"{where}: {problem}" for problem in mismatches]
    if _needs_backend_flag(manifest, runtime):
        problems.append(
            f"{where}: the plan is version-compatible, which Triton's TensorRT backend loads "
            f"only when started with `{TRITON_VERSION_COMPATIBLE_FLAG}` (then set "
            f"{VERSION_COMPATIBLE_ENV}=true for `tritonize check`)"
        )
    return problems


def _version_mismatch(built: dict[str, Any], runtime: EngineRuntime) -> str | None:
    version, here = str(built["version"]), str(runtime.tensorrt_version)
    refusal = _version_refusal(version, here, bool(built.get("version_compatible", False)))
    if refusal is None:
        return None
    return f"plan built with TensorRT {version}, runtime has TensorRT {here} ({refusal})"


def _gpu_mismatch(built: dict[str, Any], runtime: EngineRuntime) -> str | None:
    capability, level = built["compute_capability"], built.get("hardware_compatibility", "none")
    unusable = [c for c in runtime.compute_capabilities if not _gpu_loads(capability, c, level)]
    if not unusable:
        return None
    return (
        f"plan built for compute capability {capability} (hardware compatibility `{level}`), "
        f"runtime GPU has {', '.join(unusable)}"
    )


def _needs_backend_flag(manifest: dict[str, Any], runtime: EngineRuntime) -> bool:
    """A version-compatible plan served by Triton's TensorRT backend, not told to accept one.
    (A generator runs its decoder plan from the Python backend, whose runtime allows it.)"""
    compatible = bool((manifest.get("tensorrt") or {}).get("version_compatible", False))
    task = (manifest.get("spec") or {}).get("task")
    served_by_backend = task not in TASKS or TASKS[task].build.engine_served_by_backend
    return compatible and served_by_backend and not runtime.version_compatible_allowed


def rebuild_command(manifest: dict[str, Any]) -> str:
    """The build command that recreates this build (same number, in place) inside the compose
    `build` service; from the registered version when it came from the registry."""
    spec = dict(manifest.get("spec", {}))
    spec["model"] = spec.get("registry") or spec.get("model")
    spec["model_version"] = spec.get("version")
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
        "model_version",
    )
    for key in keys:
        if spec.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(spec[key])]
    return shlex.join([*args, "--overwrite"])


def _parts(version: str) -> tuple[int, ...]:
    """`10.13.2.6` -> (10, 13, 2, 6); a non-numeric part ends the version."""
    parts = []
    for part in version.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def _version_refusal(built: str, runtime: str, version_compatible: bool) -> str | None:
    """Why TensorRT `runtime` would refuse a plan built by TensorRT `built` (None: it loads)."""
    plan, here = _parts(built), _parts(runtime)
    if len(plan) < 4 or len(here) < 4:
        return "both need all four parts of the version to be compared"
    if not version_compatible:
        return None if plan == here else "a plan loads only under the TensorRT build that made it"
    if plan[:2] < _FIRST_VERSION_COMPATIBLE:
        return "version compatibility starts with TensorRT 8.6"
    if here[0] not in _LOADING_MAJORS.get(plan[0], (plan[0],)):
        return f"a version-compatible plan of TensorRT {plan[0]} does not load under {here[0]}"
    if here < plan:
        return "a version-compatible plan loads only under its own or a later TensorRT"
    return None


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
    """The full TensorRT version a plan would load under: the Python package's, else the
    library's (`major.minor.patch.build`)."""
    version = python_tensorrt_version()
    if version:
        return version
    # The Triton image has the TensorRT library but not its Python bindings.
    for name in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"):
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        return library_version(library)
    return None


def library_version(library: Any) -> str | None:
    """`major.minor.patch.build` from libnvinfer's exported version functions (None if absent)."""
    names = ("Major", "Minor", "Patch", "Build")
    try:
        functions = [getattr(library, f"getInferLib{name}Version") for name in names]
    except AttributeError:
        return None
    for function in functions:
        function.restype = ctypes.c_int32
    return ".".join(str(int(function())) for function in functions)


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
