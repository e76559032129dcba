"""Find and remove what a tritonserver run leaves: Python-backend stubs and shm regions.

Each run passes the Python backend its own shared-memory prefix,
`tritonize_<owner pid>_<token>_`. Every stub carries its region's name on its command line
(argv[2]) and every region is `/dev/shm/<prefix>...`, so both can be found and removed
whatever happened to tritonserver, and a later run can remove what a killed owner left.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from tritonize.processes import is_alive

SHM_DIR = Path("/dev/shm")
STUB_NAME = "triton_python_backend_stub"
_PREFIX = re.compile(r"^tritonize_(\d+)_[0-9a-f]+_")


def new_prefix(owner_pid: int | None = None) -> str:
    """A shm prefix unique to one run of one owner process."""
    return f"tritonize_{owner_pid or os.getpid()}_{secrets.token_hex(4)}_"


@dataclass(frozen=True)
class Stub:
    """A running Python-backend stub: one model instance."""

    pid: int
    model: str  # from argv[1], <repository>/<model>/<version>/model.py
    instance: str  # argv[8], e.g. minilm_tokenizer_0_0
    region: str  # argv[2], its shm region's name


def find_stubs(prefix: str) -> list[Stub]:
    """Every live stub whose shm region starts with `prefix` (`tritonize_` for all of ours)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        stub = _parse_stub(int(entry.name), [a.decode(errors="replace") for a in argv])
        if stub is not None and stub.region.startswith(prefix) and is_alive(stub.pid):
            found.append(stub)
    return found


def _parse_stub(pid: int, argv: list[str]) -> Stub | None:
    if len(argv) < 9 or Path(argv[0]).name != STUB_NAME:
        return None
    return Stub(pid=pid, model=Path(argv[1]).parent.parent.name, instance=argv[8], region=argv[2])


def shm_regions(prefix: str) -> list[Path]:
    try:
        return sorted(p for p in SHM_DIR.iterdir() if p.name.startswith(prefix))
    except OSError:
        return []


def kill_stubs(stubs: list[Stub], timeout_s: float = 5.0) -> int:
    """SIGKILL `stubs` (they hold no state worth saving once their server is gone)."""
    for stub in stubs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(stub.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while any(is_alive(s.pid) for s in stubs) and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(stubs)


def remove_regions(regions: list[Path]) -> int:
    removed = 0
    for region in regions:
        with contextlib.suppress(FileNotFoundError, PermissionError):
            region.unlink()
            removed += 1
    return removed


def remove_leftovers(prefix: str) -> tuple[int, int]:
    """Kill every stub of this prefix, then remove its regions: (stubs, regions) removed."""
    stubs = kill_stubs(find_stubs(prefix))
    return stubs, remove_regions(shm_regions(prefix))


def remove_orphans() -> tuple[int, int]:
    """Remove stubs and regions of earlier runs whose owner process is dead."""
    dead = {
        match.group(0)
        for name in [s.region for s in find_stubs("tritonize_")]
        + [p.name for p in shm_regions("tritonize_")]
        if (match := _PREFIX.match(name)) and not is_alive(int(match.group(1)))
    }
    totals = [remove_leftovers(prefix) for prefix in sorted(dead)]
    return sum(t[0] for t in totals), sum(t[1] for t in totals)
