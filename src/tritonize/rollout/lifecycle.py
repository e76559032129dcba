"""`rollout` and `rollback`: move a public model from the serving build to another, losing no
request.

A rollout loads the candidate build beside the serving one (under its own names), gates it
(`verify` against the candidate by name, its agreement with the serving build), then rewrites
the public model's config to point at it and loads that: Triton keeps the old pointer serving
until the new one is ready. The old build's models are unloaded once they have drained. At any
failure before the pointer moves, the candidate is unloaded and the serving build was never
touched; a pointer that does not load is put back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tritonclient.http as http_client

from tritonize.api_key import API_KEY_HEADER
from tritonize.client import TritonizeClient
from tritonize.errors import ServerError, TritonizeError
from tritonize.monitor.scrape import default_metrics_url, read
from tritonize.progress import note, step
from tritonize.repository.builds import (
    Pointer,
    build_versions,
    previous,
    remove_build,
    serving,
    unlink_other_versions,
)
from tritonize.repository.canary import Canary, serve_build, start_canary
from tritonize.repository.golden import GOLDEN, read_golden
from tritonize.repository.manifest import integrity_problems
from tritonize.rollout.agreement import Agreement, golden_agreement, sample_agreement
from tritonize.rollout.canary import CanaryPlan, Judgement, judge
from tritonize.rollout.interface import differences, public_interface
from tritonize.server.admin import RepositoryAdmin
from tritonize.tasks.build import StepNames
from tritonize.verify import Deployment, verify

QUIET_S = 1.0  # a drained build's models have answered nothing for this long
DRAIN_TIMEOUT_S = 120.0


class RolloutError(TritonizeError):
    """The candidate does not serve; the serving build serves as before."""


@dataclass(frozen=True)
class Server:
    """The Triton a rollout acts on, and the repository it serves."""

    repository: Path
    http_url: str
    api_key: str
    metrics_url: str | None = None
    grpc_url: str | None = None  # loads and unloads go this way when it answers

    def admin(self) -> RepositoryAdmin:
        grpc_url = self.grpc_url if self.grpc_url and _answers(self.grpc_url) else None
        if self.grpc_url and grpc_url is None:
            note(
                f"gRPC at {self.grpc_url} does not answer: loading through HTTP, which holds "
                "HTTP clients while a build loads (--grpc-url names Triton's gRPC port)"
            )
        return RepositoryAdmin(self.http_url, self.api_key, timeout_s=600.0, grpc_url=grpc_url)


def _answers(grpc_url: str) -> bool:
    import tritonclient.grpc as grpc_client

    client = grpc_client.InferenceServerClient(grpc_url)
    try:
        return bool(client.is_server_live(client_timeout=5.0))
    except Exception:  # unreachable, or not Triton's gRPC
        return False
    finally:
        client.close()


@dataclass(frozen=True)
class Gates:
    """What a candidate must pass before traffic moves to it."""

    verify: bool = True
    golden: Path | None = None  # judged against the candidate; default: its own golden.json
    sample: tuple[str, ...] = ()  # texts both builds answer, compared
    min_agreement: float | None = None  # share of golden records and sample texts, 0..1


@dataclass
class Outcome:
    name: str
    serving: int
    previous: int
    seconds: float
    agreements: list[Agreement] = field(default_factory=list)


def rollout(
    server: Server, name: str, version: int, gates: Gates, canary: CanaryPlan | None = None
) -> Outcome:
    """Move `name` to build `version` after `gates` (and `canary`, when given); raise
    `RolloutError` if it does not."""
    started = time.perf_counter()
    current = _serving(server.repository, name)
    if version == current.version:
        raise RolloutError(f"`{name}` already serves build {version}")
    _refuse_unfit(server.repository, name, current.version, version)
    admin = _admin(server, StepNames(name, version))
    candidate = StepNames(name, version)
    with step(f"Loading build {version} of `{name}` beside build {current.version}"):
        _load(admin, candidate)
    try:
        agreements = _gate(server, name, current.version, version, gates)
    except BaseException:
        _unload(admin, candidate)
        raise
    if canary is not None:
        _canary(server, admin, name, current.version, version, canary)
    _move(server, admin, name, current.version, version)
    return Outcome(name, version, current.version, time.perf_counter() - started, agreements)


def rollback(server: Server, name: str) -> Outcome:
    """Move `name` back to the build that served before; it passed its gates then."""
    current = _serving(server.repository, name)
    target = previous(server.repository, name)
    if target is None:
        raise RolloutError(
            f"`{name}` has no earlier build to go back to: build {current.version} is the only "
            "one that served and is still on disk"
        )
    started = time.perf_counter()
    admin = _admin(server, StepNames(name, target))
    with step(f"Loading build {target} of `{name}` beside build {current.version}"):
        _load(admin, StepNames(name, target))
    _move(server, admin, name, current.version, target)
    return Outcome(name, target, current.version, time.perf_counter() - started)


def _admin(server: Server, build: StepNames) -> RepositoryAdmin:
    """The server's keyed repository API, once it has answered and shown that it serves this
    repository (its index lists the build)."""
    admin = server.admin()
    try:
        states = admin.states()
    except ServerError as exc:
        raise RolloutError(f"cannot act on the server: {exc}") from None
    if build.entry not in states:
        raise RolloutError(
            f"the server at {server.http_url} does not list `{build.entry}`: does it serve "
            f"`{server.repository}`?"
        )
    return admin


def keep_builds(server: Server, name: str, keep: int) -> list[int]:
    """Delete all but the `keep` newest builds of NAME from disk; the serving build and the
    one a rollback would return to stay. Returns the versions removed."""
    current = _serving(server.repository, name)
    spared = {current.version, previous(server.repository, name)}
    versions = build_versions(server.repository, name)
    doomed = [v for v in versions[: max(len(versions) - keep, 0)] if v not in spared]
    for version in doomed:
        remove_build(server.repository, name, version)
    return doomed


def _serving(repository: Path, name: str) -> Pointer:
    current = serving(repository, name)
    if current is None:
        built = build_versions(repository, name)
        raise RolloutError(
            f"`{name}` in `{repository}` is not a model that points at a build"
            + (
                f" (builds on disk: {', '.join(map(str, built))})"
                if built
                else ": rebuild it with this tritonize"
            )
        )
    return current


def _refuse_unfit(repository: Path, name: str, serving_version: int, version: int) -> None:
    """Refuse a candidate that is not built whole, or whose interface would break clients."""
    names = StepNames(name, version)
    if version not in build_versions(repository, name):
        built = ", ".join(map(str, build_versions(repository, name)))
        raise RolloutError(f"build {version} of `{name}` is not on disk (builds: {built})")
    altered = [
        f"{model}: {problem}"
        for model in (names.entry, *names.steps)
        if (repository / model / str(version)).is_dir()
        for problem in integrity_problems(repository / model / str(version))
    ]
    if altered:
        raise RolloutError(f"build {version} of `{name}` is not as built: {'; '.join(altered)}")
    changed = differences(
        public_interface(repository, name, serving_version),
        public_interface(repository, name, version),
    )
    if changed:
        raise RolloutError(
            f"build {version} of `{name}` answers differently from build {serving_version}, "
            f"which would break its clients: {'; '.join(changed)}. Build it under another "
            "--name instead"
        )


def _gate(
    server: Server, name: str, serving_version: int, version: int, gates: Gates
) -> list[Agreement]:
    entry = StepNames(name, version).entry
    if gates.verify:
        with step(f"Gate: verify `{entry}`"):
            golden = gates.golden or server.repository / entry / GOLDEN
            deployment = Deployment(server.http_url, entry, golden, metrics_url=server.metrics_url)
            checks = verify(deployment)
            for check in checks:
                note(check.describe())
            failed = [c.name for c in checks if not c.passed]
            if failed:
                raise RolloutError(f"build {version} failed its gate: {', '.join(failed)}")
    with step(f"Comparing build {version} with build {serving_version}"):
        agreements = _agreements(server, name, entry, gates.sample)
        for agreement in agreements:
            note(agreement.describe())
    low = [a for a in agreements if gates.min_agreement and a.share < gates.min_agreement]
    if low:
        raise RolloutError(
            f"build {version} agrees too little with build {serving_version} (at least "
            f"{gates.min_agreement:.0%} wanted): {'; '.join(a.describe() for a in low)}"
        )
    return agreements


def _agreements(server: Server, name: str, entry: str, sample: tuple[str, ...]) -> list[Agreement]:
    golden = read_golden(server.repository / name / GOLDEN)
    with TritonizeClient(server.http_url, "http") as client:
        found = [golden_agreement(client, entry, golden)]
        if sample:
            found.append(sample_agreement(client, name, entry, golden["task"], sample))
    return found


def _move(server: Server, admin: RepositoryAdmin, name: str, old: int, new: int) -> None:
    """Point `name` at build `new` and load it; then let build `old` drain and unload it."""
    with step(f"Moving `{name}` from build {old} to build {new}"):
        serve_build(server.repository, name, new)
        try:
            admin.load(name)
        except ServerError as exc:
            serve_build(server.repository, name, old)
            _reload_after_failure(admin, name)
            _unload(admin, StepNames(name, new))
            raise RolloutError(f"`{name}` did not load pointing at build {new}: {exc}") from None
        note(f"`{name}` serves build {new}")
    with step(f"Unloading build {old} once it has drained"):
        old_models = _loaded(admin, StepNames(name, old))
        _wait_quiet(server, old_models)
        _unload(admin, StepNames(name, old))
        # The candidate's own entry was loaded for its gate: `name` serves it now.
        admin.unload(StepNames(name, new).entry)
        unlink_other_versions(server.repository, name, keep=new)
        note(f"unloaded {', '.join(old_models) or 'nothing'}")


def _canary(
    server: Server, admin: RepositoryAdmin, name: str, old: int, new: int, plan: CanaryPlan
) -> None:
    """Route `plan.share` of NAME's requests to build `new` for `plan.seconds`, judging the
    gates as it goes; on a broken gate (or anything else), back to build `old` alone."""
    serving_entry = StepNames(name, old).entry
    metrics_url = server.metrics_url or default_metrics_url(server.http_url)
    with step(f"Canary: {plan.share:.0%} of `{name}`'s requests to build {new}"):
        try:
            read(metrics_url)  # the gates read it: known to answer before anything moves
            admin.load(serving_entry)  # the router calls each build by its own name
        except TritonizeError as exc:
            _unload(admin, StepNames(name, new))
            raise RolloutError(f"the canary cannot start: {exc}") from None
        try:
            start_canary(server.repository, Canary(name, old, new, plan.share))
            admin.load(name)
            judgement = _watch(metrics_url, name, old, new, plan)
        except TritonizeError as exc:  # the router did not load, the metrics went away, ...
            _back_to(server, admin, name, old, new)
            raise RolloutError(f"the canary stopped: {exc}. `{name}` serves build {old}") from None
        except BaseException:  # Ctrl-C: back to the serving build all the same
            _back_to(server, admin, name, old, new)
            raise
    if judgement.breaches:
        with step(f"The canary broke its gates: back to build {old}"):
            _back_to(server, admin, name, old, new)
        raise RolloutError(
            f"build {new} broke the canary's gates: {'; '.join(judgement.breaches)}. "
            f"`{name}` serves build {old}"
        )


def _watch(url: str, name: str, old: int, new: int, plan: CanaryPlan) -> Judgement:
    """Judge the gates every `plan.interval_s` until `plan.seconds` pass or one breaks."""
    start, before = time.monotonic(), read(url)
    end = start + plan.seconds
    while True:
        time.sleep(max(min(plan.interval_s, end - time.monotonic()), 0.0))
        judgement = judge(before, read(url), name, old, new, plan)
        note(f"{time.monotonic() - start:5.1f} s  {judgement.describe()}")
        if judgement.breaches or time.monotonic() >= end:
            return judgement


def _back_to(server: Server, admin: RepositoryAdmin, name: str, old: int, new: int) -> None:
    """NAME serves build `old` alone again; the candidate and the old entry drain, unload."""
    serve_build(server.repository, name, old)
    _reload_after_failure(admin, name)
    leaving = [*_loaded(admin, StepNames(name, new)), StepNames(name, old).entry]
    _wait_quiet(server, leaving)
    for model in leaving:
        admin.unload(model)
    unlink_other_versions(server.repository, name, keep=old)
    note(f"`{name}` serves build {old}; unloaded {', '.join(leaving)}")


def _reload_after_failure(admin: RepositoryAdmin, name: str) -> None:
    """Triton leaves a model whose reload failed unavailable: load the restored pointer."""
    try:
        admin.load(name)
    except ServerError as exc:
        raise RolloutError(
            f"`{name}` did not load again after a failed move: {exc}. It is not serving"
        ) from None


def _load(admin: RepositoryAdmin, names: StepNames) -> None:
    """Load a build's entry (an ensemble brings its steps); on failure, unload what came up."""
    try:
        admin.load(names.entry)
    except ServerError as exc:
        _unload(admin, names)
        raise RolloutError(f"build {names.version} of `{names.name}` did not load: {exc}") from None


def _loaded(admin: RepositoryAdmin, names: StepNames) -> list[str]:
    states = admin.states()
    return [m for m in (names.entry, *names.steps) if states.get(m) == "READY"]


def _unload(admin: RepositoryAdmin, names: StepNames) -> None:
    for model in _loaded(admin, names):
        admin.unload(model)


def _wait_quiet(server: Server, models: list[str]) -> None:
    """Wait until `models` have answered nothing for `QUIET_S`: requests the old pointer
    accepted still pass through the old build's steps."""
    if not models:
        return
    client = http_client.InferenceServerClient(server.http_url)
    headers = {API_KEY_HEADER: server.api_key}

    def counts() -> list[int]:
        return [_requests_seen(client, model, headers) for model in models]

    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    last, since = counts(), time.monotonic()
    while time.monotonic() - since < QUIET_S and time.monotonic() < deadline:
        time.sleep(0.2)
        now = counts()
        if now != last:
            last, since = now, time.monotonic()


def _requests_seen(client: Any, model: str, headers: dict[str, str]) -> int:
    try:
        stats = client.get_inference_statistics(model, headers=headers)
    except Exception:  # unloaded meanwhile: nothing more will pass through it
        return -1
    return sum(
        int(s["inference_stats"][kind]["count"])
        for s in stats.get("model_stats", [])
        for kind in ("success", "fail")
    )
