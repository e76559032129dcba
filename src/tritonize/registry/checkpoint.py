"""Where a registered model version's files hold a Hugging Face checkpoint.

Three layouts are accepted: the checkpoint at the artifact root; in exactly one sub-folder (a
run's `mlflow.log_artifacts(ckpt_dir, "checkpoint")`); or an `mlflow.transformers` model, whose
weights and config sit in `model/` and its tokenizer in `components/tokenizer/`: those are joined
by links into one directory, as the export expects a checkpoint to be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tritonize.errors import RegistryError

CONFIG = "config.json"
WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "*.bin.index.json")
JOINED = "tritonize-checkpoint"  # the links an mlflow.transformers model is joined into
EXPECTED = (
    "a Hugging Face checkpoint: `config.json` and weights (`*.safetensors` or "
    "`pytorch_model.bin`) at the top or in one sub-folder, or an `mlflow.transformers` model "
    "logged with its weights (save_pretrained=True)"
)


def find_checkpoint(root: Path) -> Path:
    """The checkpoint directory inside downloaded registry files `root`."""
    mlmodel = root / "MLmodel"
    if mlmodel.is_file():
        flavor = _transformers_flavor(mlmodel)
        if flavor is not None:
            return _join_transformers_model(root, flavor)
    if is_checkpoint(root):
        return root
    found = [d for d in sorted(root.iterdir()) if d.is_dir() and is_checkpoint(d)]
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(f"`{d.name}/`" for d in found)
        raise RegistryError(f"registry files hold {len(found)} checkpoints ({names}): expected one")
    raise RegistryError(f"registry files are not a supported checkpoint: found {describe(root)}; "
                        f"expected {EXPECTED}")  # fmt: skip


def is_checkpoint(directory: Path) -> bool:
    """`config.json` and at least one weights file."""
    has_weights = any(next(directory.glob(pattern), None) for pattern in WEIGHTS)
    return (directory / CONFIG).is_file() and has_weights


def describe(root: Path, limit: int = 12) -> str:
    """The entries of `root` (folders with their files one level down), for an error message."""
    entries: list[str] = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            inside = sorted(p.name for p in entry.iterdir())
            entries.append(f"`{entry.name}/` ({', '.join(inside[:6]) or 'empty'})")
        else:
            entries.append(f"`{entry.name}`")
    if not entries:
        return "no files"
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def _transformers_flavor(mlmodel: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(mlmodel.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryError(f"registry files: `MLmodel` cannot be read ({exc})") from exc
    flavors = data.get("flavors") if isinstance(data, dict) else None
    flavor = flavors.get("transformers") if isinstance(flavors, dict) else None
    return flavor if isinstance(flavor, dict) else None


def _join_transformers_model(root: Path, flavor: dict[str, Any]) -> Path:
    """`model/` plus each of `components/<name>/`, linked into one checkpoint directory."""
    binary = flavor.get("model_binary")
    model_dir = root / binary if isinstance(binary, str) else None
    if model_dir is None or not is_checkpoint(model_dir):
        source = flavor.get("source_model_name", "?")
        raise RegistryError(
            f"registry files are an `mlflow.transformers` model without weights (it refers to "
            f"`{source}`, logged with save_pretrained=False?): found {describe(root)}; "
            f"expected {EXPECTED}"
        )
    joined = root / JOINED
    joined.mkdir(exist_ok=True)
    components = [root / "components" / str(name) for name in flavor.get("components") or []]
    for directory in [model_dir, *(c for c in components if c.is_dir())]:
        for file in directory.iterdir():
            link = joined / file.name
            if not link.exists():
                link.symlink_to(file.resolve())
    return joined
