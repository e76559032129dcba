"""Server-side figures of a time window, from two readings of Triton's counters.

The readings come from Triton's /metrics (scraped directly) or from Prometheus (instant queries
at the window's edges): both give the same kind of samples, so both give the same figures.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from prometheus_client.parser import text_string_to_metric_families

# Triton's per-model series used here. Percentiles need `--metrics-config
# summary_latencies=true` (a sliding one-minute summary) or, on newer servers,
# `histogram_latencies=true`.
COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_first_response_histogram_ms_bucket",
    "nv_inference_request_summary_us",
)
PENDING = "nv_inference_pending_request_count"


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Reading:
    """Samples of Triton metrics at one moment."""

    def __init__(self, samples: Iterable[Sample]) -> None:
        self.samples = list(samples)

    @classmethod
    def from_text(cls, text: str) -> Reading:
        """Parse Triton's text exposition (with `prometheus_client`'s parser)."""
        return cls(
            Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        )

    def total(self, name: str, model: str, **labels: str) -> float:
        """Sum over every series of `name` for `model` that carries `labels`."""
        # The text parser names every counter sample `<family>_total`, whether Triton wrote
        # the suffix or not; Prometheus keeps Triton's names. Either matches.
        names = {name, f"{name}_total"}
        return sum(
            s.value
            for s in self.samples
            if s.name in names
            and s.labels.get("model") == model
            and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def label_values(self, name: str, model: str, label: str) -> set[str]:
        names = {name, f"{name}_total"}
        return {
            s.labels[label]
            for s in self.samples
            if s.name in names and s.labels.get("model") == model and label in s.labels
        }


@dataclass(frozen=True)
class ServerFigures:
    """What Triton saw of one model between two readings."""

    model: str
    seconds: float
    successes: float
    failures: dict[str, float] = field(default_factory=dict)  # by reason
    throughput_rps: float = 0.0
    avg_latency_ms: float = 0.0
    queue_ms: float = 0.0
    compute_input_ms: float = 0.0
    compute_infer_ms: float = 0.0
    compute_output_ms: float = 0.0
    achieved_batch_size: float | None = None  # of the engine step
    p95_ms: float | None = None  # Triton's own: its latency summary, else its histogram
    max_pending: float | None = None

    @property
    def queue_share(self) -> float:
        return self.queue_ms / self.avg_latency_ms if self.avg_latency_ms else 0.0

    @property
    def failure_ratio(self) -> float:
        failed = sum(self.failures.values())
        total = failed + self.successes
        return failed / total if total else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "queue_share": self.queue_share,
            "failure_ratio": self.failure_ratio,
        }


def figures(
    before: Reading,
    after: Reading,
    seconds: float,
    model: str,
    engine: str | None = None,
    steps: tuple[str, ...] = (),
) -> ServerFigures:
    """Figures of `model` between two readings, and the batch size of its `engine` step.

    For an ensemble, pass its `steps`: requests queue in the steps, not in the ensemble, so
    the queue time is theirs (an ensemble's compute times already add up its steps').
    """

    def delta(name: str, of: str = model, **labels: str) -> float:
        return after.total(name, of, **labels) - before.total(name, of, **labels)

    queued = sum(delta("nv_inference_queue_duration_us", of) for of in (model, *steps))
    successes = delta("nv_inference_request_success")
    per_request = 1e-3 / successes if successes else 0.0  # us totals -> ms per request
    reasons = after.label_values("nv_inference_request_failure", model, "reason")
    failures = {r: delta("nv_inference_request_failure", reason=r) for r in sorted(reasons)}
    batch = None
    if engine is not None and delta("nv_inference_exec_count", engine) > 0:
        batch = delta("nv_inference_count", engine) / delta("nv_inference_exec_count", engine)
    return ServerFigures(
        model=model,
        seconds=seconds,
        successes=successes,
        failures={r: n for r, n in failures.items() if n},
        throughput_rps=successes / seconds if seconds else 0.0,
        avg_latency_ms=delta("nv_inference_request_duration_us") * per_request,
        queue_ms=queued * per_request,
        compute_input_ms=delta("nv_inference_compute_input_duration_us") * per_request,
        compute_infer_ms=delta("nv_inference_compute_infer_duration_us") * per_request,
        compute_output_ms=delta("nv_inference_compute_output_duration_us") * per_request,
        achieved_batch_size=batch,
        p95_ms=_summary_p95(after, model) or _histogram_p95(before, after, model),
    )


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' `histogram_quantile` over cumulative (upper bound, count) buckets."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * (
                (rank - lower_count) / width if width else 0
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def _summary_p95(after: Reading, model: str) -> float | None:
    """p95 of the summary's sliding window (the last minute), in ms."""
    name = "nv_inference_request_summary_us"
    if "0.95" not in after.label_values(name, model, "quantile"):
        return None
    value = after.total(name, model, quantile="0.95")
    return value / 1000 if value == value else None  # NaN when the window is empty


def _histogram_p95(before: Reading, after: Reading, model: str) -> float | None:
    name = "nv_inference_first_response_histogram_ms_bucket"
    bounds = after.label_values(name, model, "le")
    buckets = [
        (float(le), after.total(name, model, le=le) - before.total(name, model, le=le))
        for le in bounds
    ]
    return histogram_quantile(0.95, buckets)
