"""manifest.json beside each engine: what built it, so that a mismatch can be named later."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

from tritonize import __version__
from tritonize.spec import BuildSpec

MANIFEST = "manifest.json"
_PACKAGES = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "numpy", "tensorrt")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(
    directory: Path,
    spec: BuildSpec,
    validation: dict[str, float],
    files: list[Path],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Record the spec, package versions, file hashes, validation figures and `extra`."""
    manifest: dict[str, Any] = {
        "tritonize": __version__,
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "spec": spec.to_dict(),
        "versions": package_versions(),
        "files": {path.name: sha256(path) for path in files},
        "onnx_validation_max_abs_diff": validation,
        **(extra or {}),
    }
    path = directory / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST).read_text())
