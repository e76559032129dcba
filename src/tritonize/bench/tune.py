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
import json
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from tritonize.bench.load import LoadResult, run_load, triton_grpc_target, triton_http_target
from tritonize.bench.space import Knobs, Plan, Space
from tritonize.errors import ServerError, SpecError, TritonizeError
from tritonize.loadtest.slo import ClientFigures, Gate, Slo, evaluate
from tritonize.monitor.figures import ServerFigures, figures
from tritonize.monitor.scrape import default_metrics_url, read
from tritonize.progress import note
from tritonize.repository.builds import build_versions, entry_config, serving
from tritonize.repository.configs import ModelConfig, engine_target, from_text
from tritonize.repository.derive import derive_build
from tritonize.rollout.lifecycle import Server
from tritonize.server.admin import READY, RepositoryAdmin
from tritonize.tasks.build import StepNames

TEXT_INPUT = "TEXT"


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

    @property
    def improves(self) -> bool:
        """A winner other than the serving config, and faster when measured again beside it
        (a sweep's single windows can crown noise)."""
        return (
            self.best is not None
            and self.best.knobs != self.baseline
            and (self.gain is None or self.gain > 1.0)
        )


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
        self._check_serving(admin)
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

    def _check_serving(self, admin: RepositoryAdmin) -> None:
        """The server answers, takes the key and serves the engine, before any config is
        tried (not one "skipped" line per config)."""
        state = admin.states().get(self.steps.engine, "not in the repository")
        if state != READY:
            raise TritonizeError(
                f"`{self.steps.engine}` is {state} on {self.server.http_url}: tune sweeps the "
                "engine of the build that serves (load it, or serve the repository)"
            )

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
        if key.strip() in values:
            raise SpecError(f"--slo gives `{key.strip()}` twice: give each objective once")
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


def write_build(result: Result, repository: Path, version: int | None = None) -> int:
    """Write the winner as build `version` (default: the next free number) of the model."""
    assert result.best is not None
    version = version or max(build_versions(repository, result.name)) + 1
    provenance = {
        "build": result.build,
        "by": "tritonize tune",
        "objective": {k: v for k, v in dataclasses.asdict(result.slo).items() if v is not None},
        "best": result.best.row(),
        "gain": result.gain,
    }
    knobs = result.best.knobs
    derive_build(repository, result.name, result.build, version, knobs.apply, knobs.spec(),
                 provenance)  # fmt: skip
    result.written = version
    return version


def write_report(result: Result, directory: Path) -> str:
    """tune.md, points.json and the plot in `directory`; returns the summary to print."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [table(result), "", _verdict(result)]
    (directory / "tune.md").write_text(
        f"# Tuning `{result.name}` build {result.build}\n\n" + "\n".join(lines) + "\n"
    )
    (directory / "points.json").write_text(
        json.dumps([p.row() for p in result.points], indent=1) + "\n"
    )
    plot(result, directory / "throughput_p95.png")
    lines.append(f"report: {directory / 'tune.md'}, {directory / 'throughput_p95.png'}")
    return "\n".join(lines)


def _verdict(result: Result) -> str:
    best = result.best
    if best is None:
        return "No config meets the objective: nothing written."
    if best.knobs == result.baseline:
        return f"The serving config is the best: {best.knobs.label()}; nothing written."
    gain = f"{result.gain:.2f}x" if result.gain else "not measured again"
    rounds = ", ".join(f"{g:.2f}" for g in result.gains)
    verdict = (
        f"Best: {best.knobs.label()} at {best.concurrency} clients, {best.client.rps:.1f}/s, "
        f"p95 {best.client.p95_ms:.1f} ms; gain over the serving config {gain}"
        + (f" (rounds: {rounds})" if rounds else "")
    )
    if not result.improves:
        verdict += "\nMeasured again, it was not faster than the serving config: nothing written."
    elif result.written is not None:
        verdict += (
            f"\nWritten as build {result.written}: `tritonize rollout {result.name} "
            f"--to {result.written}` serves it."
        )
    return verdict


def plot(result: Result, path: Path) -> None:
    """Throughput against p95, one line per config through its concurrencies (numbered),
    the serving config dashed, the winner bold and circled."""
    from tritonize.loadtest.report import pyplot, save_figure

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(12, 6))
    configs = list(dict.fromkeys(p.knobs for p in result.points))
    colours = plt.get_cmap("tab20").colors
    for index, knobs in enumerate(configs):
        points = sorted((p for p in result.points if p.knobs == knobs), key=lambda p: p.concurrency)
        winner = result.best is not None and knobs == result.best.knobs
        serving = knobs == result.baseline
        axes.plot(
            [p.client.p95_ms for p in points], [p.client.rps for p in points], marker="o",
            label=knobs.label() + (" (serving)" if serving else ""),
            color="black" if serving else colours[index % len(colours)],
            linestyle="--" if serving else "-", linewidth=2.5 if winner else 1.0,
            alpha=1.0 if winner or serving else 0.6,
        )  # fmt: skip
    for point in result.points:  # each point's concurrency, small, beside it
        axes.annotate(str(point.concurrency), (point.client.p95_ms, point.client.rps),
                      fontsize=6, alpha=0.6, xytext=(3, 3), textcoords="offset points")  # fmt: skip
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
