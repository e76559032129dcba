"""`tritonize versions`: a model's builds on disk and in the server, and which one serves."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tritonize.errors import ServerError, TritonizeError
from tritonize.repository.builds import build_versions, history, serving
from tritonize.repository.canary import canary_of
from tritonize.repository.manifest import MANIFEST, read_manifest
from tritonize.server import leftovers
from tritonize.server.admin import RepositoryAdmin
from tritonize.tasks.build import StepNames


@dataclass(frozen=True)
class Build:
    version: int
    serving: bool
    state: str  # Triton's state of the build's models: READY, UNAVAILABLE, ... or "not loaded"
    task: str
    target: str
    precision: str
    built_at: str
    registry: str  # the registered model version it was built from, or ""
    disk_mib: float
    memory_mib: float | None  # resident memory of its Python stubs; None: not measurable here

    def row(self) -> str:
        memory = "-" if self.memory_mib is None else f"{self.memory_mib:.0f} MiB"
        return (
            f"{'*' if self.serving else ' '} {self.version:>4}  {self.state:<11} {self.task:<20} "
            f"{self.target:<12} {self.precision:<5} {self.built_at:<25} {self.disk_mib:>8.1f} MiB "
            f"{memory:>9}  {self.registry}"
        )


HEADER = (
    "  build  state       task                 target       prec. built at                 "
    "     disk    memory  registry"
)


def list_builds(
    repository: Path, name: str, http_url: str | None, api_key: str | None
) -> list[Build]:
    """NAME's builds, oldest first; states and memory when a server and its key are given."""
    versions = build_versions(repository, name)
    if not versions:
        raise TritonizeError(f"`{repository}` holds no build of `{name}` (no {name}.vN/ folder)")
    current = serving(repository, name)
    states = _states(http_url, api_key)
    rss = _stub_memory() if states is not None else {}
    return [
        _build(repository, name, version, current is not None and current.version == version,
               states, rss)
        for version in versions
    ]  # fmt: skip


def as_dict(repository: Path, name: str, builds: list[Build]) -> dict[str, Any]:
    current = serving(repository, name)
    canary = canary_of(repository, name)
    return {
        "model": name,
        "serving": current.version if current else None,
        "canary": asdict(canary) if canary else None,
        "history": history(repository, name),
        "builds": [asdict(b) for b in builds],
    }


def canary_line(repository: Path, name: str) -> str | None:
    """What a running canary does, in words."""
    canary = canary_of(repository, name)
    if canary is None:
        return None
    return (
        f"canary: build {canary.candidate} answers {canary.share:.0%} of `{name}`'s requests, "
        f"build {canary.serving} the rest"
    )


def _build(
    repository: Path,
    name: str,
    version: int,
    is_serving: bool,
    states: dict[str, str] | None,
    rss: dict[str, float],
) -> Build:
    names = StepNames(name, version)
    models = [names.entry, *(s for s in names.steps if (repository / s).is_dir())]
    manifest = _manifest(repository, models, version)
    spec = manifest.get("spec", {})
    served_by = [*models, *([name] if is_serving else [])]
    state = _state(states, name if is_serving else names.entry)
    loaded = state not in ("?", "not loaded")
    memory = sum(rss.get(m, 0.0) for m in served_by) if loaded else None
    return Build(
        version=version,
        serving=is_serving,
        state=state,
        task=str(spec.get("task", "?")),
        target=str(spec.get("target", "?")),
        precision=str(spec.get("precision", "?")),
        built_at=str(manifest.get("built_at", "?")),
        registry=str(spec.get("registry") or ""),
        disk_mib=sum(_size(repository / m / str(version)) for m in models) / 2**20,
        memory_mib=memory,
    )


def registry_source(repository: Path, name: str, version: int) -> str | None:
    """The registered model version (`models:/NAME/N`) build `version` was built from."""
    names = StepNames(name, version)
    spec = _manifest(repository, [names.entry, *names.steps], version).get("spec", {})
    return spec.get("registry") or None


def _manifest(repository: Path, models: list[str], version: int) -> dict[str, Any]:
    """The fullest manifest of the build (the engine's holds the spec and figures)."""
    found: dict[str, Any] = {}
    for model in models:
        path = repository / model / str(version)
        if (path / MANIFEST).exists():
            try:
                manifest = read_manifest(path)
            except (OSError, ValueError):
                continue
            if "spec" in manifest:
                return manifest
            found = found or manifest
    return found


def _state(states: dict[str, str] | None, model: str) -> str:
    """The state of the model that answers for a build: NAME for the serving one."""
    if states is None:
        return "?"
    state = states.get(model, "")
    return state if state and state != "UNAVAILABLE" else "not loaded"


def _states(http_url: str | None, api_key: str | None) -> dict[str, str] | None:
    """Each model's state from the keyed index API, or None without a server."""
    if not http_url:
        return None
    if not api_key:
        raise TritonizeError(
            "the server's model states need its admin key: --api-key or TRITONIZE_API_KEY "
            "(or leave out --url to list what is on disk)"
        )
    try:
        return RepositoryAdmin(http_url, api_key).states()
    except ServerError as exc:
        raise TritonizeError(str(exc)) from None


def _stub_memory() -> dict[str, float]:
    """Resident MiB of the Python-backend stubs on this host, by model (a server elsewhere
    shows none)."""
    found: dict[str, float] = {}
    for stub in leftovers.find_stubs(""):
        found[stub.model] = found.get(stub.model, 0.0) + _rss_mib(stub.pid)
    return found


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0
