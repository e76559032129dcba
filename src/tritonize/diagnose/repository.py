"""The repository on disk against what Triton serves: configs, build manifests, versions."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.message import Message
from tritonclient.grpc.model_config_pb2 import ModelConfig

from tritonize.repository.configs import from_text
from tritonize.repository.manifest import MANIFEST, integrity_problems, package_versions

# Packages a served model imports, and the file that tells a version directory needs one.
RUNTIME_PACKAGES = {"numpy": None, "onnxruntime": "model.onnx", "tokenizers": "tokenizer.json",
                    "tensorrt": "model.plan"}  # fmt: skip
_SITE_PACKAGES = re.compile(r"(/\S+?/(?:site|dist)-packages)/")


# -- configs ----------------------------------------------------------------------------------
def disk_config(repository: Path, model: str) -> ModelConfig | str:
    """The model's config.pbtxt parsed, or why it cannot be."""
    path = repository / model / "config.pbtxt"
    try:
        return from_text(path.read_text())
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    except text_format.ParseError as exc:
        return f"{path} does not parse: {exc}"


def loaded_config(config: dict[str, Any]) -> ModelConfig:
    """Triton's JSON config as a `ModelConfig` (fields this protobuf lacks are dropped)."""
    return json_format.ParseDict(config, ModelConfig(), ignore_unknown_fields=True)


def config_differences(disk: Message, loaded: Message, where: str = "") -> list[str]:
    """Every field set on disk whose loaded value differs. Triton fills in defaults for what
    the file leaves out, so only what the file says is compared."""
    differences = []
    for field, value in disk.ListFields():
        path = f"{where}.{field.name}" if where else field.name
        differences += _field_differences(field, value, getattr(loaded, field.name), path)
    return differences


def _field_differences(field: Any, on_disk: Any, served: Any, path: str) -> list[str]:
    is_message = field.type == field.TYPE_MESSAGE
    if is_message and field.message_type.GetOptions().map_entry:
        return _map_differences(field, on_disk, served, path)
    if _repeated(field):
        if len(on_disk) != len(served):
            return [f"{path}: {len(on_disk)} on disk, {len(served)} served"]
        if not is_message:
            return [] if list(on_disk) == list(served) else [_show(path, on_disk, served)]
        return [d for i, (a, b) in enumerate(zip(on_disk, served, strict=True))
                for d in config_differences(a, b, f"{path}[{i}]")]  # fmt: skip
    if is_message:
        return config_differences(on_disk, served, path)
    return [] if on_disk == served else [_show(path, on_disk, served)]


def _repeated(field: Any) -> bool:
    # protobuf 6 deprecates `label`; earlier releases have no `is_repeated`
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == field.LABEL_REPEATED)


def _map_differences(field: Any, on_disk: Any, served: Any, path: str) -> list[str]:
    differences = [f"{path}[{key!r}]: on disk only" for key in on_disk if key not in served]
    value_is_message = field.message_type.fields_by_name["value"].type == field.TYPE_MESSAGE
    for key in on_disk:
        if key in served:
            where = f"{path}[{key!r}]"
            if value_is_message:
                differences += config_differences(on_disk[key], served[key], where)
            elif on_disk[key] != served[key]:
                differences.append(_show(where, on_disk[key], served[key]))
    return differences


def _show(path: str, on_disk: Any, served: Any) -> str:
    def text(value: Any) -> str:
        return repr(list(value)) if hasattr(value, "__len__") and not isinstance(value, str) \
            else repr(value)  # fmt: skip

    return f"{path}: {text(on_disk)} on disk, {text(served)} served"


# -- manifests and versions -------------------------------------------------------------------
def version_directories(repository: Path, model: str) -> list[Path]:
    directory = repository / model
    try:
        return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
    except OSError:
        return []


def serving_versions(stub_pids: list[int]) -> tuple[dict[str, str | None], str]:
    """The runtime packages' versions where the stubs import them from, and that source.

    A stub's interpreter finds its packages by PATH, not as this process does: the site-packages
    its memory maps name are the truth. Without a stub to look at, this Python's packages."""
    sites = sorted({site for pid in stub_pids for site in _mapped_sites(pid)})
    if not sites:
        here = package_versions()
        return {name: here.get(name) for name in RUNTIME_PACKAGES}, "this Python (no stub seen)"
    found: dict[str, str | None] = dict.fromkeys(RUNTIME_PACKAGES)
    for dist in importlib.metadata.distributions(path=sites):
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name in found and found[name] is None:
            found[name] = dist.version
    return found, f"the stubs' site-packages ({', '.join(sites)})"


def _mapped_sites(pid: int) -> set[str]:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return set(_SITE_PACKAGES.findall(maps))


def manifest_findings(
    directory: Path, runtime: dict[str, str | None]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """For one version directory: its manifest's versions against `runtime`, version
    mismatches, and files that differ from the manifest."""
    from tritonize.repository.manifest import read_manifest

    changed = integrity_problems(directory)
    if not (directory / MANIFEST).is_file():
        return {"manifest": None}, [], changed
    try:
        built = read_manifest(directory).get("versions") or {}
    except (OSError, ValueError, AttributeError):
        return {"manifest": "unreadable"}, [], changed
    needed = [name for name, marker in RUNTIME_PACKAGES.items()
              if marker is None or (directory / marker).exists()]  # fmt: skip
    mismatches = [
        f"{name} {built[name]} at build, {runtime.get(name) or 'none'} serving"
        for name in needed
        if built.get(name) and runtime.get(name) != built[name]
    ]
    record = {"built_with": built, "compared": needed, "mismatches": mismatches}
    return record, mismatches, changed
