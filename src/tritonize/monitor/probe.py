"""`tritonize probe`: accuracy in production. Every interval the golden records a build wrote
are replayed against the serving model, each judged as `verify` judges it (the task's own
tolerance), and the agreement, outcomes and latency are exported for Prometheus."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tritonize.client import TritonizeClient
from tritonize.errors import TritonizeError
from tritonize.tasks import task_named
from tritonize.tasks.base import Outcome, RecordJudgement, golden_records
from tritonize.verify import _read_golden as read_checked_golden

# Up to a generation's few seconds; embeddings and classes land in the first buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class ProbeSettings:
    url: str
    model: str
    golden: Path
    protocol: str = "http"
    interval_s: float = 60.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9105
    timeout_s: float = 30.0  # per request

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise TritonizeError(
                f"`--interval` {self.interval_s:g} s: expected a positive duration (60s, 5m)"
            )


@dataclass(frozen=True)
class Replayed:
    """One golden record replayed: its index, judgement and the seconds its request took."""

    index: int
    judgement: RecordJudgement
    seconds: float


@dataclass(frozen=True)
class Round:
    records: tuple[Replayed, ...]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.records if r.judgement.outcome is outcome)

    @property
    def agreement(self) -> float:
        """Records that agree / records judged; NaN when every request failed (then nothing
        was judged: the failures say so, not a false disagreement)."""
        judged = len(self.records) - self.count(Outcome.FAILED)
        return self.count(Outcome.AGREE) / judged if judged else float("nan")

    @property
    def passed(self) -> bool:
        return self.count(Outcome.AGREE) == len(self.records)

    def describe(self) -> str:
        seconds = [r.seconds for r in self.records]
        p50, p95 = (float(np.percentile(seconds, q)) * 1000 for q in (50, 95))
        judged = len(self.records) - self.count(Outcome.FAILED)
        shown = f"{self.agreement:.3f} ({self.count(Outcome.AGREE)}/{judged} judged)"
        return (
            f"agreement {shown if judged else 'n/a (nothing judged)'}, "
            f"{self.count(Outcome.FAILED)} failed of {len(self.records)}, "
            f"latency p50 {p50:.1f} ms, p95 {p95:.1f} ms"
        )


class ProbeMetrics:
    """The prober's metrics, in a registry of its own (several probers in one process stay
    apart). Every outcome's counter exists from the start, so that a first failure is an
    increase Prometheus can see."""

    def __init__(self, model: str, interval_s: float) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        self.agreement = Gauge(
            "tritonize_probe_agreement",
            "Share of judged golden records that agree with their reference, last round",
            ["model"], registry=self.registry,
        )  # fmt: skip
        self.requests = Counter(
            "tritonize_probe_requests",
            "Golden records replayed, by outcome (agree, disagree, failed)",
            ["model", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "tritonize_probe_latency_seconds",
            "Seconds one golden record's request took",
            ["model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.last_round = Gauge(
            "tritonize_probe_last_round_timestamp_seconds",
            "Unix time the last round ended",
            ["model"], registry=self.registry,
        )  # fmt: skip
        interval = Gauge(
            "tritonize_probe_interval_seconds",
            "Seconds between rounds (a prober silent for 3 intervals is alerted on)",
            ["model"], registry=self.registry,
        )  # fmt: skip
        interval.labels(model).set(interval_s)
        for outcome in Outcome:
            self.requests.labels(model, outcome.value)

    def record(self, finished: Round) -> None:
        for replayed in finished.records:
            self.requests.labels(self.model, replayed.judgement.outcome.value).inc()
            self.latency.labels(self.model).observe(replayed.seconds)
        self.agreement.labels(self.model).set(finished.agreement)
        self.last_round.labels(self.model).set(time.time())


def replay(settings: ProbeSettings, golden: dict[str, Any]) -> Round:
    """One round: every golden record sent alone, judged by the golden file's task. A client
    per round, so that a restarted server or a new version is met afresh."""
    task = task_named(golden["task"])
    records = []
    with TritonizeClient(settings.url, settings.protocol, timeout_s=settings.timeout_s) as client:
        for index, record in enumerate(golden_records(golden)):
            start = time.perf_counter()
            judgement = _judge(task.judge_record, client, settings.model, record)
            records.append(Replayed(index, judgement, time.perf_counter() - start))
    return Round(tuple(records))


def _judge(
    judge: Callable[[TritonizeClient, str, dict[str, Any]], RecordJudgement],
    client: TritonizeClient, model: str, record: dict[str, Any],
) -> RecordJudgement:  # fmt: skip
    """The judgement, or a failure for anything a response could break (a missing output, a
    malformed answer): the prober outlives whatever the server sends."""
    try:
        return judge(client, model, record)
    except Exception as exc:  # any request's error is counted, never fatal
        return RecordJudgement(Outcome.FAILED, f"{type(exc).__name__}: {exc}")


def _export(metrics: ProbeMetrics, settings: ProbeSettings) -> tuple[Any, threading.Thread]:
    """The metrics endpoint, or an error naming the address it could not take."""
    try:
        return start_http_server(
            settings.metrics_port, settings.metrics_host, registry=metrics.registry
        )
    except OSError as exc:
        raise TritonizeError(
            f"`--metrics-port` {settings.metrics_port} on `--metrics-host` "
            f"{settings.metrics_host}: cannot listen ({exc.strerror or exc}); pick a free port"
        ) from exc


def report_round(finished: Round, say: Callable[[str], None]) -> None:
    """A line per record that did not agree (its error or difference), then the round's."""
    for replayed in finished.records:
        if replayed.judgement.outcome is not Outcome.AGREE:
            outcome = replayed.judgement.outcome.value
            say(f"record {replayed.index} {outcome}: {replayed.judgement.detail}")
    say(finished.describe())


def probe(
    settings: ProbeSettings,
    say: Callable[[str], None] = print,
    once: bool = False,
    stop: threading.Event | None = None,
) -> int:
    """`--once`: one round, 0 when every record agrees, else 1. Otherwise a round every
    interval, exported on the metrics port, until `stop` is set (or the process ends)."""
    golden = read_checked_golden(settings.golden)
    golden_records(golden)  # a malformed file is refused before anything starts
    if once:
        finished = replay(settings, golden)
        report_round(finished, say)
        return 0 if finished.passed else 1
    metrics = ProbeMetrics(settings.model, settings.interval_s)
    server, thread = _export(metrics, settings)
    say(
        f"probing `{settings.model}` at {settings.url} ({settings.protocol}) every "
        f"{settings.interval_s:g} s with {settings.golden}; metrics on "
        f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"
    )
    stop = stop or threading.Event()
    try:
        while not stop.is_set():
            started = time.monotonic()
            finished = replay(settings, golden)
            metrics.record(finished)
            report_round(finished, say)
            stop.wait(max(0.0, settings.interval_s - (time.monotonic() - started)))
    finally:
        server.shutdown()
        thread.join(timeout=5)
    return 0
