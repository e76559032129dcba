"""`tune`: find the engine step's serving settings that give the most throughput within a
latency objective, in the spirit of Triton's Model Analyzer.

Against a running server, the serving build's engine step is reloaded with each candidate
config (Triton's load with a config override: the files on disk stay as they are, requests in
flight finish on the old instances), and the public model is driven by the closed-loop load
generator at each concurrency. A candidate's score is its best throughput among the points that
meet the objective. The serving config is measured in the same sweep, and the winner and it are
measured again side by side (alternating rounds) for the gain. The engine's config from disk is
loaded back at the end, whatever happened. The winner becomes a new build of the model
(`repository/derive.py`), which the lifecycle commands roll out.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from tritonize.bench.load import LoadResult, run_load, triton_grpc_target, triton_http_target
from tritonize.errors import ServerError, SpecError, TritonizeError
from tritonize.loadtest.slo import ClientFigures, Gate, Slo, evaluate
from tritonize.monitor.figures import ServerFigures, figures
from tritonize.monitor.scrape import default_metrics_url, read
from tritonize.progress import note
from tritonize.repository.builds import entry_config, serving
from tritonize.repository.configs import THREAD_PARAMETERS, ModelConfig, engine_target, from_text
from tritonize.rollout.lifecycle import Server
from tritonize.server.admin import RepositoryAdmin
from tritonize.spec import Target
from tritonize.tasks.build import StepNames

TEXT_INPUT = "TEXT"


@dataclass(frozen=True)
class Knobs:
    """The engine step's settings that tune sweeps (BuildSpec's names for them)."""

    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]
    engine_instances: int
    engine_threads: int  # 0: the engine's default (local: the cores shared among instances)

    @classmethod
    def of(cls, config: ModelConfig) -> Knobs:
        """The settings `config` serves with."""
        parameter = THREAD_PARAMETERS.get(engine_target(config))
        threads = (
            config.parameters[parameter].string_value if parameter in config.parameters else ""
        )
        return cls(
            max_queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds,
            preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_size),
            engine_instances=sum(group.count for group in config.instance_group) or 1,
            engine_threads=int(threads or 0),
        )

    def apply(self, config: ModelConfig) -> None:
        """Set these settings in an engine step's `config`."""
        batching = config.dynamic_batching
        batching.max_queue_delay_microseconds = self.max_queue_delay_us
        batching.preferred_batch_size[:] = self.preferred_batch_sizes
        del config.instance_group[1:]
        config.instance_group[0].count = self.engine_instances
        parameter = THREAD_PARAMETERS.get(engine_target(config))
        if parameter is not None:
            if self.engine_threads:
                config.parameters[parameter].string_value = str(self.engine_threads)
            elif parameter in config.parameters:
                del config.parameters[parameter]

    def spec(self) -> dict[str, Any]:
        """The settings as BuildSpec fields (for the derived build's manifest)."""
        return {
            **dataclasses.asdict(self),
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
        }

    def label(self) -> str:
        preferred = ",".join(map(str, self.preferred_batch_sizes)) or "-"
        threads = self.engine_threads or "auto"
        return (
            f"delay {self.max_queue_delay_us}us, preferred {preferred}, "
            f"{self.engine_instances} inst x {threads} thr"
        )


@dataclass(frozen=True)
class Space:
    """What to sweep: every combination of these values."""

    delays_us: tuple[int, ...] = (0, 1000, 4000)
    preferred: tuple[tuple[int, ...], ...] = ((), (8, 16))
    instances: tuple[int, ...] = (1, 2)
    threads: tuple[int, ...] = (0,)

    def candidates(self, target: Target, max_batch_size: int) -> list[Knobs]:
        if target is Target.TENSORRT and any(self.threads):
            raise SpecError("tune: --threads: a TensorRT engine has no thread setting; pass 0")
        for sizes in self.preferred:
            if any(not 1 <= size <= max_batch_size for size in sizes):
                raise SpecError(
                    f"tune: --preferred {','.join(map(str, sizes))}: each size must be 1.."
                    f"{max_batch_size} (the engine's max_batch_size)"
                )
        return [
            Knobs(delay, sizes, instances, threads)
            for delay, sizes, instances, threads in itertools.product(
                self.delays_us, self.preferred, self.instances, self.threads
            )
        ]


@dataclass(frozen=True)
class Plan:
    """How each candidate is measured."""

    concurrency: tuple[int, ...] = (1, 16, 64)
    seconds: float = 5.0
    warmup_s: float = 1.5
    protocol: str = "grpc"
    confirm_rounds: int = 2  # winner and serving config again, alternating, for the gain


@dataclass
class Point:
    """One candidate at one concurrency."""

    knobs: Knobs
    concurrency: int
    client: ClientFigures
    server: ServerFigures | None
    gates: list[Gate] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def meets(self) -> bool:
        return all(gate.passed for gate in self.gates)

    def row(self) -> dict[str, Any]:
        batch = self.server.achieved_batch_size if self.server else None
        return {
            **self.knobs.spec(),
            "concurrency": self.concurrency,
            "per_second": self.client.rps,
            "p50_ms": self.client.p50_ms,
            "p95_ms": self.client.p95_ms,
            "p99_ms": self.client.p99_ms,
            "failures": self.client.failures,
            "engine_batch": batch,
            "meets": self.meets,
        }


@dataclass
class Result:
    """The sweep, the winner and its gain over the serving config."""

    name: str
    build: int
    slo: Slo
    baseline: Knobs
    points: list[Point]
    best: Point | None
    gain: float | None = None  # winner / serving config, median of the confirm rounds
    gains: list[float] = field(default_factory=list)
    written: int | None = None  # the build the winner was written as


class Tuner:
    """Sweeps one model's serving build on a live server."""

    def __init__(self, server: Server, name: str, slo: Slo, plan: Plan, texts: Sequence[str]):
        self.server, self.name, self.slo, self.plan = server, name, slo, plan
        pointer = serving(server.repository, name)
        if pointer is None:
            raise TritonizeError(
                f"`{name}` in `{server.repository}` points at no build: tune sweeps the build a "
                "public model serves (built by `tritonize build`)"
            )
        self.build = pointer.version
        self.steps = StepNames(name, pointer.version)
        entry = entry_config(server.repository, name, pointer.version)
        if entry.platform != "ensemble" or [t.name for t in entry.input] != [TEXT_INPUT]:
            raise TritonizeError(
                f"tune measures models that take one {TEXT_INPUT} per request through a "
                f"tokenizer and an engine step; `{name}` build {pointer.version} is not one "
                f"(inputs: {', '.join(t.name for t in entry.input)}; platform "
                f"{entry.platform or entry.backend})"
            )
        path = server.repository / self.steps.engine / "config.pbtxt"
        self.engine_config = from_text(path.read_text())
        self.metrics_url = server.metrics_url or default_metrics_url(server.http_url)
        self.target = self._target(texts)

    def _target(self, texts: Sequence[str]) -> Any:
        if self.plan.protocol == "http":
            host, port = self.server.http_url.split("://")[-1].rsplit(":", 1)
            return triton_http_target(host, int(port), self.name, texts)
        if not self.server.grpc_url:
            raise TritonizeError("tune over gRPC needs Triton's gRPC address (--grpc-url)")
        return triton_grpc_target(self.server.grpc_url, self.name, texts)

    def candidates(self, space: Space) -> tuple[Knobs, list[Knobs]]:
        """The serving settings and the candidates, the serving ones first."""
        baseline = Knobs.of(self.engine_config)
        swept = space.candidates(
            engine_target(self.engine_config), self.engine_config.max_batch_size
        )
        return baseline, [baseline, *(k for k in dict.fromkeys(swept) if k != baseline)]

    def sweep(self, candidates: list[Knobs]) -> list[Point]:
        points = []
        admin = self.server.admin()
        with self._restoring(admin):
            for index, knobs in enumerate(candidates, 1):
                note(f"[{index}/{len(candidates)}] {knobs.label()}")
                try:
                    self._load(admin, knobs)
                except ServerError as exc:  # e.g. more instances than memory allows
                    note(f"    skipped: the engine did not load with it ({exc})")
                    continue
                for concurrency in self.plan.concurrency:
                    point = self.measure(knobs, concurrency)
                    points.append(point)
                    note(f"    {_describe(point)}")
        return points

    def confirm(self, admin: RepositoryAdmin, baseline: Point, best: Point) -> list[float]:
        """Gains of `best` over `baseline`, each measured right after the other."""
        gains = []
        with self._restoring(admin):
            for round_ in range(1, self.plan.confirm_rounds + 1):
                measured = []
                for point in (baseline, best):
                    self._load(admin, point.knobs)
                    measured.append(self.measure(point.knobs, point.concurrency).client.rps)
                gains.append(measured[1] / measured[0] if measured[0] else float("nan"))
                note(f"confirm round {round_}: {measured[1]:.1f} vs {measured[0]:.1f}/s")
        return gains

    def measure(self, knobs: Knobs, concurrency: int) -> Point:
        before = read(self.metrics_url)
        load = run_load(self.target, concurrency, self.plan.seconds, self.plan.warmup_s)
        server = figures(
            before, read(self.metrics_url), self.plan.seconds + self.plan.warmup_s,
            self.name, self.steps.engine, (self.steps.tokenizer, self.steps.engine),
        )  # fmt: skip
        client = client_figures(load)
        point = Point(knobs, concurrency, client, server, errors=load.errors[:3])
        point.gates = evaluate(self.slo, client, server)
        return point

    def _load(self, admin: RepositoryAdmin, knobs: Knobs) -> None:
        config = ModelConfig()
        config.CopyFrom(self.engine_config)
        knobs.apply(config)
        admin.load(self.steps.engine, config=json_format.MessageToJson(config))

    @contextmanager
    def _restoring(self, admin: RepositoryAdmin) -> Iterator[None]:
        """Load the engine's config from disk again on the way out, whatever happened."""
        try:
            yield
        finally:
            admin.load(self.steps.engine)


def client_figures(load: LoadResult) -> ClientFigures:
    answered = len(load.latencies)
    mean_ms = float(load.latencies.mean() * 1e3) if answered else float("nan")
    return ClientFigures(
        requests=answered + load.failures,
        failures=load.failures,
        rps=load.per_second,
        avg_ms=mean_ms,
        p50_ms=load.percentile_ms(50),
        p95_ms=load.percentile_ms(95),
        p99_ms=load.percentile_ms(99),
    )


def best_point(points: list[Point]) -> Point | None:
    """The point with the most throughput among those that meet the objective."""
    meeting = [p for p in points if p.meets]
    return max(meeting, key=lambda p: p.client.rps, default=None)


def best_of(points: list[Point], knobs: Knobs) -> Point | None:
    """`knobs`' best point within the objective."""
    return best_point([p for p in points if p.knobs == knobs])


def tune(tuner: Tuner, space: Space) -> Result:
    baseline, candidates = tuner.candidates(space)
    note(
        f"sweeping {len(candidates)} configs x {len(tuner.plan.concurrency)} concurrencies of "
        f"`{tuner.name}` build {tuner.build} ({tuner.steps.engine}), "
        f"{tuner.plan.warmup_s + tuner.plan.seconds:.1f} s each"
    )
    points = tuner.sweep(candidates)
    result = Result(tuner.name, tuner.build, tuner.slo, baseline, points, best_point(points))
    reference = best_of(points, baseline) or _at(points, baseline, result.best)
    if result.best and reference and result.best.knobs != baseline and tuner.plan.confirm_rounds:
        result.gains = tuner.confirm(tuner.server.admin(), reference, result.best)
        result.gain = statistics.median(result.gains)
    return result


def _at(points: list[Point], knobs: Knobs, like: Point | None) -> Point | None:
    """`knobs`' point at `like`'s concurrency: the serving config's, where none of its
    points met the objective, to measure the winner's gain against."""
    found = [p for p in points if like and p.knobs == knobs and p.concurrency == like.concurrency]
    return found[0] if found else None


def parse_slo(items: Sequence[str]) -> Slo:
    """`p95_ms=50 max_failure_ratio=0` as an Slo; names and values are checked."""
    allowed = {f.name for f in dataclasses.fields(Slo)}
    values: dict[str, float] = {}
    for item in items:
        key, _, text = item.partition("=")
        if key.strip() not in allowed:
            raise SpecError(
                f"--slo {item!r}: unknown objective; allowed: {', '.join(sorted(allowed))}"
            )
        try:
            values[key.strip()] = float(text)
        except ValueError:
            raise SpecError(f"--slo {item!r}: `{text}` is not a number") from None
    values.setdefault("max_failure_ratio", 0.0)  # a config that drops requests never wins
    return Slo(**values)


def _describe(point: Point) -> str:
    c = point.client
    batch = point.server.achieved_batch_size if point.server else None
    failed = f", {c.failures} failed ({point.errors[0]})" if c.failures and point.errors else ""
    return (
        f"{point.concurrency:>3} clients: {c.rps:7.1f}/s  p50 {c.p50_ms:6.1f}  p95 "
        f"{c.p95_ms:6.1f}  p99 {c.p99_ms:6.1f} ms  batch {batch or 0:4.1f}  "
        f"{'meets' if point.meets else 'misses'} the objective{failed}"
    )


def table(result: Result) -> str:
    """A Markdown table of every point, the winner marked."""
    lines = [
        "| config | clients | sentences/s | p50 ms | p95 ms | p99 ms | engine batch | objective |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for point in result.points:
        c, batch = point.client, point.server.achieved_batch_size if point.server else None
        mark = (
            " **best**"
            if point is result.best
            else (" (serving)" if point.knobs == result.baseline else "")
        )
        lines.append(
            f"| {point.knobs.label()}{mark} | {point.concurrency} | {c.rps:.1f} | {c.p50_ms:.1f} | "
            f"{c.p95_ms:.1f} | {c.p99_ms:.1f} | {batch or 0:.1f} | "
            f"{'meets' if point.meets else 'misses'} |"
        )
    return "\n".join(lines)


def plot(result: Result, path: Path) -> None:
    """Throughput against p95, one line per config through its concurrencies."""
    from tritonize.loadtest.report import pyplot, save_figure

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(12, 6))
    for knobs in dict.fromkeys(p.knobs for p in result.points):
        points = sorted((p for p in result.points if p.knobs == knobs), key=lambda p: p.concurrency)
        winner = result.best is not None and knobs == result.best.knobs
        label = knobs.label() + (" (serving)" if knobs == result.baseline else "")
        axes.plot(
            [p.client.p95_ms for p in points], [p.client.rps for p in points], marker="o",
            label=label, linewidth=2.5 if winner else 1.0, alpha=1.0 if winner else 0.6,
        )  # fmt: skip
    if result.slo.p95_ms is not None:
        axes.axvline(result.slo.p95_ms, color="tab:red", linestyle="--", label="p95 objective")
    if result.best:
        axes.scatter([result.best.client.p95_ms], [result.best.client.rps], s=200,
                     facecolors="none", edgecolors="black", label="best", zorder=3)  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel("p95 latency (ms, log)")
    axes.set_ylabel("sentences/s")
    axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    title = f"{result.name} build {result.build}: throughput vs p95"
    save_figure(plt, figure, path, title=title, bbox_inches="tight")
