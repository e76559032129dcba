"""The MLflow registry: resolve a registry URI to a local checkpoint, and move aliases.

The tracking server is `MLFLOW_TRACKING_URI`; without it, MLflow's local store in the working
directory, `sqlite:///mlflow.db` (the model registry needs a database store), whose artifacts go
to `./mlruns`. mlflow is imported inside the functions: `import tritonize` does not need it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tritonize.errors import RegistryError
from tritonize.registry.checkpoint import find_checkpoint
from tritonize.registry.uri import ModelUri, check_alias

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

LOCAL_STORE = "sqlite:///mlflow.db"
PROBE_TIMEOUT_S = 5.0
CACHE = Path("~/.cache/tritonize/registry")


@dataclass(frozen=True)
class ResolvedModel:
    """A registered model version and where its checkpoint now lies on disk."""

    checkpoint: Path
    name: str
    version: int
    run_id: str | None  # the run that logged the files, where the version names one
    source: str  # the version's source URI, as registered
    alias: str | None = None  # the alias it was asked by, if any

    @property
    def uri(self) -> str:
        """`models:/NAME/VERSION`: the version itself, which an alias may later leave."""
        return f"models:/{self.name}/{self.version}"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, or the SQLite store `mlflow.db` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or LOCAL_STORE


def resolve_model(uri: str, destination: Path | None = None) -> ResolvedModel:
    """Download the registered version `uri` names (`models:/NAME/VERSION` or
    `models:/NAME@ALIAS`) into `destination` (default ~/.cache/tritonize/registry/NAME/VERSION,
    replaced on each call) and find the checkpoint in its files."""
    wanted = ModelUri.parse(uri)
    with connection() as client:
        version = _model_version(client, wanted)
        target = destination or CACHE.expanduser() / wanted.name / str(version.version)
        files = _download(f"models:/{wanted.name}/{version.version}", target)
    return ResolvedModel(
        checkpoint=find_checkpoint(files),
        name=wanted.name,
        version=int(version.version),
        run_id=version.run_id or None,
        source=str(version.source),
        alias=wanted.alias,
    )


def set_alias(name: str, alias: str, version: int) -> None:
    """Point `alias` of registered model `name` at `version` (after a rollout that succeeded)."""
    check_alias(alias)
    with connection() as client:
        _model_version(client, ModelUri(name, version=version))
        client.set_registered_model_alias(name, alias, str(version))


@contextmanager
def connection() -> Iterator[MlflowClient]:
    """A client of the tracking server, checked reachable; MLflow's errors become
    RegistryError."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    _probe(uri)
    try:
        yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    except MlflowException as exc:
        raise RegistryError(f"MLflow at `{uri}`: {exc.message}") from exc


def _probe(uri: str) -> None:
    """Fail fast on a server that is not there (MLflow's own client retries for minutes).
    Any HTTP answer will do: only a connection that cannot be made is refused."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryError(
            f"MLflow tracking server `{uri}` cannot be reached ({reason}): start it, or set "
            "MLFLOW_TRACKING_URI to one that runs (unset, the local store "
            f"`{LOCAL_STORE}` in the working directory is used)"
        ) from exc


def _model_version(client: MlflowClient, wanted: ModelUri) -> ModelVersion:
    """The version `wanted` names; a missing model, version or alias is named with what exists."""
    model = _registered_model(client, wanted.name)
    if wanted.alias is not None:
        aliases: dict[str, Any] = dict(model.aliases or {})
        if wanted.alias not in aliases:
            raise RegistryError(
                f"registered model `{wanted.name}` has no alias `{wanted.alias}`: its aliases are "
                f"{_listing(f'{a} -> {v}' for a, v in sorted(aliases.items()))}"
            )
        return _version(client, wanted.name, int(aliases[wanted.alias]))
    assert wanted.version is not None  # ModelUri.parse sets one of the two
    return _version(client, wanted.name, wanted.version)


def _registered_model(client: MlflowClient, name: str) -> RegisteredModel:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    names = sorted(m.name for m in client.search_registered_models(max_results=100))
    raise RegistryError(
        f"registered model `{name}` does not exist at `{tracking_uri()}`: registered models "
        f"are {_listing(names)}"
    )


def _version(client: MlflowClient, name: str, version: int) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    found = client.search_model_versions(f"name = '{name}'") if "'" not in name else []
    numbers = sorted(int(v.version) for v in found)
    raise RegistryError(
        f"registered model `{name}` has no version {version}: its versions are "
        f"{_listing(str(n) for n in numbers)}"
    )


def _download(uri: str, target: Path) -> Path:
    """The version's files in `target`, downloaded beside it first so a failure leaves none."""
    from mlflow.artifacts import download_artifacts

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        download_artifacts(
            artifact_uri=uri,
            dst_path=str(staging),
            tracking_uri=tracking_uri(),
            registry_uri=tracking_uri(),
        )
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _listing(items: Iterator[str] | list[str]) -> str:
    names = list(items)
    return ", ".join(f"`{n}`" for n in names) if names else "none"
