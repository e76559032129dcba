"""The output folder: every finding as a file a person can open."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tritonize.errors import TritonizeError


class Folder:
    """Writes files under one directory and remembers which."""

    def __init__(self, path: Path) -> None:
        if path.exists() and not path.is_dir():
            raise TritonizeError(f"`--out` {path} is a file: give a directory for the findings")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TritonizeError(f"`--out` {path}: cannot create it ({exc.strerror})") from exc
        self.path = path
        self.files: list[str] = []

    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if name not in self.files:
            self.files.append(name)
        return target

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2, default=str) + "\n")
