"""Locate the tritonserver binary that the `nvidia-pytriton` wheel ships, and its environment."""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from tritonize.errors import ServerError


@dataclass(frozen=True)
class BundledTriton:
    """Paths inside the installed wheel."""

    root: Path  # site-packages/pytriton/tritonserver
    libs: Path  # site-packages/nvidia_pytriton.libs

    @classmethod
    def find(cls) -> BundledTriton:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or spec.origin is None:
            raise ServerError(
                "the bundled tritonserver is not installed: `pip install 'tritonize[serve]'` "
                "(or serve the repository with the official Triton container)"
            )
        site = Path(spec.origin).parent.parent
        return cls(root=site / "pytriton" / "tritonserver", libs=site / "nvidia_pytriton.libs")

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    def backend_files(self) -> list[Path]:
        """The Python backend's files and the stub for this interpreter (`<dir>/python/`)."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise ServerError(f"the bundled Python backend has no stub for Python {version}")
        backend = self.root / "backends" / "python"
        return [*sorted(p for p in backend.iterdir() if p.is_file()), stub]

    def environment(self) -> dict[str, str]:
        """Environment that lets the Python stub embed *this* interpreter and its packages."""
        env = dict(os.environ)
        # The stub links libpython: the venv's own first, or the system one shadows it.
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, str(self.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        # The stub's interpreter finds its site-packages through PATH (it ignores PYTHONPATH).
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        # Keep __pycache__ out of the model repository.
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env
