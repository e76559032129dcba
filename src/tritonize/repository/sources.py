"""The Python-backend models' files in a repository: each version directory holds a copy of
the `triton_models` package and a model.py that re-exports one of its modules."""

from __future__ import annotations

import shutil
from pathlib import Path

import tritonize.triton_models as triton_models

PACKAGE_DIR = "triton_models"  # the Python-backend sources, copied beside each model.py

# The stub's embedded interpreter ignores PYTHONDONTWRITEBYTECODE, and it compiles model.py
# before running it: so model.py turns bytecode off for what it imports and removes its own.
_ENTRY_POINT = '''"""Triton entry point: the model lives in {package}/{module}.py."""

import sys

sys.dont_write_bytecode = True  # no __pycache__ in the model repository

import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402

from {package}.{module} import TritonPythonModel  # noqa: E402

with contextlib.suppress(OSError):
    _own_bytecode = importlib.util.cache_from_source(__file__)
    os.remove(_own_bytecode)
    os.rmdir(os.path.dirname(_own_bytecode))

__all__ = ["TritonPythonModel"]
'''


def write_python_sources(version_dir: Path, module: str) -> None:
    """A new version directory running `triton_models.<module>`: its model.py and the package."""
    version_dir.mkdir(parents=True)
    shutil.copytree(
        Path(triton_models.__file__).parent,
        version_dir / PACKAGE_DIR,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (version_dir / "model.py").write_text(_ENTRY_POINT.format(package=PACKAGE_DIR, module=module))
