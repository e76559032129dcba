"""Service-level objectives per scenario (YAML), and the gates a run must pass."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tritonize.errors import SpecError
from tritonize.monitor.figures import ServerFigures

# Each objective's range: (lowest, whether the lowest itself is allowed, highest), and its words.
_RANGES = {
    "p95_ms": (0.0, False, math.inf, "a number above 0 (ms)"),
    "p99_ms": (0.0, False, math.inf, "a number above 0 (ms)"),
    "max_failure_ratio": (0.0, True, 1.0, "a ratio between 0 and 1"),
    "min_throughput_rps": (0.0, True, math.inf, "a number of requests/s, at least 0"),
    "max_queue_share": (0.0, True, 1.0, "a share between 0 and 1"),
    "min_batch_size": (1.0, True, math.inf, "a batch size, at least 1"),
}


@dataclass(frozen=True)
class Slo:
    """Limits of one scenario; None means not gated."""

    p95_ms: float | None = None
    p99_ms: float | None = None
    max_failure_ratio: float | None = None
    min_throughput_rps: float | None = None
    max_queue_share: float | None = None  # server: queue time / request time
    min_batch_size: float | None = None  # server: achieved batch size of the engine step

    def __post_init__(self) -> None:
        for name, (low, low_allowed, high, allowed) in _RANGES.items():
            value = getattr(self, name)
            if value is None:
                continue
            above = value >= low if low_allowed else value > low
            if not (math.isfinite(value) and above and value <= high):
                raise SpecError(f"SLO `{name}` = {value!r} is not allowed: expected {allowed}")

    @classmethod
    def from_file(cls, path: Path, scenario: str) -> Slo:
        """`defaults:` overlaid with `scenarios: {<scenario>: ...}`; unknown keys are refused."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SpecError(f"cannot read SLO file `{path}`: {exc}") from exc
        values = {**data.get("defaults", {}), **data.get("scenarios", {}).get(scenario, {})}
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise SpecError(
                f"SLO file `{path}`: unknown key(s) {', '.join(unknown)}; allowed: "
                f"{', '.join(sorted(allowed))}"
            )
        for key, value in values.items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise SpecError(f"SLO file `{path}`: `{key}` = {value!r} is not a number")
        return cls(**values)


@dataclass(frozen=True)
class ClientFigures:
    """Locust's view of the run (failed requests included in the percentiles)."""

    requests: int
    failures: int
    rps: float
    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0


@dataclass(frozen=True)
class Gate:
    name: str
    limit: float
    actual: float | None
    passed: bool
    skipped: str | None = None  # why the criterion does not apply to this run

    def describe(self) -> str:
        if self.skipped:
            return f"SKIP  {self.name}: does not apply: {self.skipped}"
        actual = "n/a" if self.actual is None else f"{self.actual:.4g}"
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {actual} (limit {self.limit:g})"


def evaluate(
    slo: Slo,
    client: ClientFigures,
    server: ServerFigures | None,
    not_applicable: dict[str, str] | None = None,
) -> list[Gate]:
    """Every gate the SLO sets; a server gate without server figures fails.

    `not_applicable` maps criteria that mean nothing for this model (an engine batch size for
    a model without an engine step) to why: they are skipped, with that note, not failed.
    """
    gates: list[tuple[str, float | None, float | None, bool]] = [
        ("p95_ms", slo.p95_ms, client.p95_ms, False),
        ("p99_ms", slo.p99_ms, client.p99_ms, False),
        ("max_failure_ratio", slo.max_failure_ratio, client.failure_ratio, False),
        ("min_throughput_rps", slo.min_throughput_rps, client.rps, True),
        ("max_queue_share", slo.max_queue_share, server.queue_share if server else None, False),
        (
            "min_batch_size",
            slo.min_batch_size,
            server.achieved_batch_size if server else None,
            True,
        ),
    ]
    skip = not_applicable or {}
    results = []
    for name, limit, actual, at_least in gates:
        if limit is None:
            continue
        if name in skip:
            results.append(Gate(name, float(limit), actual, True, skipped=skip[name]))
            continue
        passed = actual is not None and (actual >= limit if at_least else actual <= limit)
        results.append(Gate(name, float(limit), actual, passed))
    return results


def load_client_figures(stats_csv: Path, request_type: str | None = None) -> ClientFigures:
    """The `Aggregated` row of Locust's `<prefix>_stats.csv`, or the row of `request_type`."""
    import csv

    def wanted(r: dict[str, str]) -> bool:
        return r["Type"] == request_type if request_type else r["Name"] == "Aggregated"

    with Path(stats_csv).open(newline="") as handle:
        row: dict[str, Any] = next(r for r in csv.DictReader(handle) if wanted(r))

    def number(key: str) -> float:
        value = row.get(key, "")
        return float(value) if value not in ("", "N/A") else 0.0

    return ClientFigures(
        requests=int(number("Request Count")),
        failures=int(number("Failure Count")),
        rps=number("Requests/s"),
        avg_ms=number("Average Response Time"),
        p50_ms=number("50%"),
        p95_ms=number("95%"),
        p99_ms=number("99%"),
    )
