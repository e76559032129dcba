"""What clients of a model depend on, and how two builds' differ: their public tensors (name,
type, shape) and the labels they answer with. A rollout between builds that differ would
break clients, so it is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from tritonize.repository.builds import entry_config
from tritonize.repository.configs import from_text
from tritonize.repository.golden import interface
from tritonize.tasks.build import StepNames


def public_interface(repository: Path, name: str, version: int) -> dict[str, Any]:
    """Build `version`'s inputs, outputs (as Triton's metadata shows them) and labels."""
    found: dict[str, Any] = dict(interface(entry_config(repository, name, version)))
    found["labels"] = _labels(repository, StepNames(name, version))
    return found


def differences(serving: dict[str, Any], candidate: dict[str, Any]) -> list[str]:
    """Each way `candidate`'s interface differs from `serving`'s, in words."""
    found = []
    for kind in ("inputs", "outputs"):
        before = {t["name"]: t for t in serving[kind]}
        after = {t["name"]: t for t in candidate[kind]}
        singular = kind[:-1]
        found += [f"{singular} `{n}` is gone" for n in sorted(before.keys() - after.keys())]
        found += [f"{singular} `{n}` is new" for n in sorted(after.keys() - before.keys())]
        for name in sorted(before.keys() & after.keys()):
            for field in ("datatype", "shape"):
                if before[name][field] != after[name][field]:
                    found.append(
                        f"{singular} `{name}` {field} {before[name][field]} -> {after[name][field]}"
                    )
    if serving["labels"] != candidate["labels"]:
        found.append(f"labels {serving['labels']} -> {candidate['labels']}")
    return found


def _labels(repository: Path, names: StepNames) -> list[str] | None:
    """The labels a build's steps answer with (a classifier's, a tagger's), if any."""
    for step in (names.entry, *names.steps):
        try:
            config = from_text((repository / step / "config.pbtxt").read_text())
        except (OSError, text_format.ParseError):
            continue
        if "labels" in config.parameters:
            return list(json.loads(config.parameters["labels"].string_value))
    return None
