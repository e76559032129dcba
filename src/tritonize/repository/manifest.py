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


def seal(directory: Path, owner: str) -> Path:
    """Record `owner` and every file of the version `directory` (sha256, size, mtime) in its
    manifest, creating a minimal one where the model has none."""
    path = directory / MANIFEST
    manifest: dict[str, Any] = read_manifest(directory) if path.exists() else {}
    manifest.setdefault("tritonize", __version__)
    manifest["owner"] = owner
    manifest["contents"] = {name: _describe(directory / name) for name in _files(directory)}
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def integrity_problems(directory: Path, hashes: bool = False) -> list[str]:
    """What is wrong with a sealed version directory: an unreadable manifest, files missing,
    altered, or added after the build.

    By default a file whose size and mtime match the manifest is taken as intact, and only a
    changed mtime costs a hash; `hashes` hashes every file. A directory without a manifest was
    written by hand, and a manifest of an earlier release lists no files: nothing to compare.
    """
    path = directory / MANIFEST
    if not path.exists():
        return []
    try:
        manifest = read_manifest(directory)
    except OSError as exc:
        return [f"`{MANIFEST}` cannot be read ({exc.strerror})"]
    except ValueError as exc:
        return [f"`{MANIFEST}` is not JSON ({exc})"]
    if not isinstance(manifest, dict):
        return [f"`{MANIFEST}` is not a JSON object"]
    contents = manifest.get("contents", {})
    if not isinstance(contents, dict):
        return [f"`{MANIFEST}` has no file list (`contents` is not an object)"]
    problems = []
    for name, recorded in sorted(contents.items()):
        file = directory / name
        if not file.is_file():
            problems.append(f"`{name}` is missing")
        elif not isinstance(recorded, dict) or _altered(file, recorded, hashes):
            problems.append(f"`{name}` differs from the build (size or sha256 changed)")
    if contents:
        problems += [
            f"`{name}` is not in the manifest (added after the build)"
            for name in _files(directory)
            if name not in contents
        ]
    return problems


def _files(directory: Path) -> list[str]:
    """Every file of a version directory but its manifest (and bytecode caches, which carry
    nothing of the build)."""
    return [
        str(file.relative_to(directory))
        for file in sorted(directory.rglob("*"))
        if file.is_file() and file.name != MANIFEST and "__pycache__" not in file.parts
    ]


def _describe(file: Path) -> dict[str, Any]:
    stat = file.stat()
    return {"sha256": sha256(file), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _altered(file: Path, recorded: dict[str, Any], hashes: bool) -> bool:
    stat = file.stat()
    if stat.st_size != recorded.get("size"):
        return True
    if not hashes and stat.st_mtime_ns == recorded.get("mtime_ns"):
        return False
    return sha256(file) != recorded.get("sha256")
