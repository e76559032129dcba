"""A canary on disk: the public model NAME as a router between two builds.

For the canary's time, NAME's config is a Python model (`triton_models/canary.py`) with NAME's
inputs and outputs plus `MODEL_VERSION`, at the serving build's number (requests that name that
version keep working), whose version directory holds the router instead of the link to the
build. `NAME/canary.json` records the canary; `serve_build` points NAME at one build again. A
server that starts while a canary is recorded (the command that ran it is gone) serves the
serving build: `serve` ends stale canaries first.
"""

from __future__ import annotations

import datetime
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from tritonize.repository.builds import CANARY, CONFIG, entry_config, point, replace_file
from tritonize.repository.configs import ModelConfig, to_text
from tritonize.repository.sources import write_python_sources
from tritonize.tasks.build import StepNames
from tritonize.triton_models.common import MODEL_VERSION

ROUTER_INSTANCES = 2  # one batch of requests waits on its builds while the next is read


@dataclass(frozen=True)
class Canary:
    name: str
    serving: int
    candidate: int
    share: float  # of the requests to NAME, 0..1


def router_config(repository: Path, canary: Canary) -> ModelConfig:
    """NAME's config during `canary`: the serving build's interface, plus MODEL_VERSION."""
    entry = entry_config(repository, canary.name, canary.serving)
    decoupled = entry.model_transaction_policy.decoupled
    config = ModelConfig(
        name=canary.name,
        backend="python",
        max_batch_size=entry.max_batch_size,
        input=entry.input,
        output=[
            *entry.output,
            mc.ModelOutput(name=MODEL_VERSION, data_type=mc.TYPE_INT64, dims=[1]),
        ],
        instance_group=[
            mc.ModelInstanceGroup(
                kind=mc.ModelInstanceGroup.KIND_CPU, count=1 if decoupled else ROUTER_INSTANCES
            )
        ],
        model_transaction_policy=entry.model_transaction_policy,
        parameters={
            key: mc.ModelParameter(string_value=str(value))
            for key, value in {
                "serving_entry": StepNames(canary.name, canary.serving).entry,
                "serving_version": canary.serving,
                "candidate_entry": StepNames(canary.name, canary.candidate).entry,
                "candidate_version": canary.candidate,
                "canary_share": canary.share,
            }.items()
        },
    )
    config.version_policy.specific.versions[:] = [canary.serving]
    if entry.max_batch_size and not decoupled:  # a call's requests go out together
        config.dynamic_batching.CopyFrom(mc.ModelDynamicBatching())
    return config


def start_canary(repository: Path, canary: Canary) -> None:
    """Write NAME as the router (Triton loads it when told to)."""
    public = repository / canary.name
    config = router_config(repository, canary)
    router = public / f".router-{canary.serving}"
    shutil.rmtree(router, ignore_errors=True)
    write_python_sources(router, "canary")
    version = public / str(canary.serving)
    if version.is_symlink():
        version.unlink()
    else:
        shutil.rmtree(version, ignore_errors=True)
    router.rename(version)
    record = {
        "serving": canary.serving,
        "candidate": canary.candidate,
        "share": canary.share,
        "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    replace_file(public / CANARY, (json.dumps(record, indent=1) + "\n").encode())
    replace_file(public / CONFIG, to_text(config).encode())


def canary_of(repository: Path, name: str) -> Canary | None:
    """The canary recorded for NAME, if one runs (or ran and was not ended)."""
    try:
        record = json.loads((repository / name / CANARY).read_text())
        return Canary(name, int(record["serving"]), int(record["candidate"]), record["share"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def serve_build(repository: Path, name: str, version: int) -> None:
    """Point NAME at build `version` alone, ending its canary if one runs (the router's
    directory gives way to the link)."""
    canary = canary_of(repository, name)
    if canary is not None:
        router = repository / name / str(canary.serving)
        if router.is_dir() and not router.is_symlink():
            shutil.rmtree(router)
    point(repository, name, version)
    (repository / name / CANARY).unlink(missing_ok=True)


def end_stale_canaries(repository: Path) -> list[Canary]:
    """At a server's start: every recorded canary goes back to its serving build."""
    ended = []
    for record in sorted(repository.glob(f"*/{CANARY}")):
        canary = canary_of(repository, record.parent.name)
        if canary is not None:
            serve_build(repository, canary.name, canary.serving)
            ended.append(canary)
    return ended
