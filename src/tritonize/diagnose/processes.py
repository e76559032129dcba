"""The tritonserver process behind a URL, its Python-backend stubs, and /dev/shm regions.

Everything here reads /proc and /dev/shm of this host, so it tells something only when
diagnose runs where the server runs (as `serve` and the compose service do).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonize.processes import is_alive
from tritonize.server import leftovers

SERVER_NAME = "tritonserver"
SHM_DIR = leftovers.SHM_DIR
PREFIX_FLAG = "shm-region-prefix-name="
# The Python backend's own prefix, for servers started without one (the official container).
DEFAULT_SHM_PREFIX = "triton_python_backend_shm_region_"
OUR_SHM_PREFIX = "tritonize_"


@dataclass(frozen=True)
class ServerProcess:
    """A running tritonserver, as its command line describes it."""

    pid: int
    http_port: int
    metrics_port: int
    shm_prefix: str  # DEFAULT_SHM_PREFIX when the command line sets none
    repository: Path | None
    log_file: Path | None  # where its stdout goes, when that is a file we may read

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "http_port": self.http_port,
            "metrics_port": self.metrics_port,
            "shm_prefix": self.shm_prefix,
            "repository": str(self.repository) if self.repository else None,
            "log_file": str(self.log_file) if self.log_file else None,
        }


def servers() -> list[ServerProcess]:
    """Every live tritonserver on this host whose command line can be read."""
    found = []
    for pid, argv in _processes():
        if argv and Path(argv[0]).name == SERVER_NAME and is_alive(pid):
            found.append(_describe_server(pid, argv))
    return found


def server_on_port(port: int) -> ServerProcess | None:
    """The tritonserver serving HTTP on `port`, if it runs here."""
    return next((server for server in servers() if server.http_port == port), None)


def _describe_server(pid: int, argv: list[str]) -> ServerProcess:
    flags = dict(_flag(arg) for arg in argv[1:] if arg.startswith("--"))
    backend_config = [arg for arg in argv if PREFIX_FLAG in arg]
    prefix = backend_config[-1].split(PREFIX_FLAG, 1)[1] if backend_config else DEFAULT_SHM_PREFIX
    repository = flags.get("--model-repository") or flags.get("--model-store")
    return ServerProcess(
        pid=pid,
        http_port=int(flags.get("--http-port", "8000")),
        metrics_port=int(flags.get("--metrics-port", "8002")),
        shm_prefix=prefix,
        repository=Path(repository) if repository else None,
        log_file=_stdout_file(pid),
    )


def _flag(argument: str) -> tuple[str, str]:
    name, _, value = argument.partition("=")
    return name, value


def _stdout_file(pid: int) -> Path | None:
    """The file tritonserver writes its log to (`serve` sends its stdout there)."""
    try:
        target = Path(os.readlink(f"/proc/{pid}/fd/1"))
    except OSError:  # another user's process, or gone
        return None
    return target if target.is_file() else None


def _processes() -> list[tuple[int, list[str]]]:
    listing = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                raw = (entry / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
                listing.append((int(entry.name), [a.decode(errors="replace") for a in raw]))
    return listing


def stubs_of(server: ServerProcess) -> list[leftovers.Stub]:
    return leftovers.find_stubs(server.shm_prefix)


@dataclass(frozen=True)
class Region:
    """A Python-backend shared-memory region and whether a live process holds it."""

    path: Path
    size: int
    owner: str | None  # "tritonserver <pid>" or "stub <pid>", None when nothing live owns it

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "size": self.size, "owner": self.owner}


@dataclass
class ShmScan:
    regions: list[Region] = field(default_factory=list)

    @property
    def leaked(self) -> list[Region]:
        return [region for region in self.regions if region.owner is None]

    def leaked_by_prefix(self) -> dict[str, list[Region]]:
        """Leaked regions grouped by their run's prefix (one killed server leaves several)."""
        groups: dict[str, list[Region]] = {}
        for region in self.leaked:
            groups.setdefault(run_prefix(region.path.name), []).append(region)
        return groups


def run_prefix(name: str) -> str:
    """The part of a region's name that names its run: `tritonize_<pid>_<token>_`, or the
    Python backend's default prefix."""
    match = re.match(r"tritonize_\d+_[0-9a-f]+_", name)
    return match.group(0) if match else DEFAULT_SHM_PREFIX


def scan_shm(live_servers: list[ServerProcess], shm_dir: Path = SHM_DIR) -> ShmScan:
    """Every region under `shm_dir` with a Python-backend prefix, with its owner if any.

    A region is owned by a live stub whose region it is, or by a live tritonserver started
    with its prefix; a region of the default prefix by any live tritonserver started without
    one (such servers cannot be told apart). Anything else outlived its server.
    """
    stub_regions = {stub.region: stub.pid for stub in leftovers.find_stubs("")}
    scan = ShmScan()
    for path in _region_files(shm_dir):
        owner = _owner(path.name, stub_regions, live_servers)
        with contextlib.suppress(OSError):
            scan.regions.append(Region(path, path.stat().st_size, owner))
    return scan


def _region_files(shm_dir: Path) -> list[Path]:
    try:
        entries = sorted(shm_dir.iterdir())
    except OSError:
        return []
    prefixes = (OUR_SHM_PREFIX, DEFAULT_SHM_PREFIX)
    return [path for path in entries if path.name.startswith(prefixes)]


def _owner(
    name: str, stub_regions: dict[str, int], live_servers: list[ServerProcess]
) -> str | None:
    if name in stub_regions:
        return f"stub {stub_regions[name]}"
    for server in live_servers:
        if name.startswith(server.shm_prefix):
            return f"tritonserver {server.pid}"
    return None
