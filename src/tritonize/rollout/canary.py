"""A canary's gates: the candidate against the serving build on what the router saw.

Three gates, each judged on everything since the canary began: the candidate's failure share
may exceed the serving build's by at most `max_failures`; its p95 latency may be at most
`max_p95_ratio` times the serving build's (once each build answered `MIN_REQUESTS`); and, when
`min_agreement` is set, the share of canary requests the serving build answered alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonize.monitor.figures import Reading, histogram_quantile
from tritonize.triton_models.canary import COMPARED, LATENCY, REQUESTS

MIN_REQUESTS = 20  # per build, before p95s and agreement are compared


@dataclass(frozen=True)
class CanaryPlan:
    share: float  # of the requests to NAME, 0..1
    seconds: float
    max_failures: float = 0.01
    max_p95_ratio: float = 1.5
    min_agreement: float | None = None
    interval_s: float = 2.0


@dataclass(frozen=True)
class BuildFigures:
    version: int
    requests: float
    failures: float
    p95_s: float | None

    @property
    def failure_share(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def describe(self) -> str:
        p95 = f"p95 {self.p95_s * 1000:.1f} ms" if self.p95_s is not None else "p95 -"
        return (
            f"build {self.version}: {self.requests:.0f} requests, {self.failures:.0f} failed "
            f"({self.failure_share:.1%}), {p95}"
        )


@dataclass(frozen=True)
class Judgement:
    serving: BuildFigures
    candidate: BuildFigures
    agreed: float
    compared: float
    breaches: tuple[str, ...]

    def describe(self) -> str:
        agreement = (
            f"agreement {self.agreed:.0f}/{self.compared:.0f} ({self.agreed / self.compared:.1%})"
            if self.compared
            else "agreement -"
        )
        return f"{self.candidate.describe()} | {self.serving.describe()} | {agreement}"


def build_figures(before: Reading, after: Reading, name: str, version: int) -> BuildFigures:
    """What the router of NAME saw of build `version` between two readings."""

    def delta(metric: str, **labels: str) -> float:
        labels["build"] = str(version)
        return after.total(metric, name, **labels) - before.total(metric, name, **labels)

    bucket = f"{LATENCY}_bucket"
    buckets = [(float(le), delta(bucket, le=le)) for le in after.label_values(bucket, name, "le")]
    requests = sum(delta(REQUESTS, outcome=o) for o in ("ok", "failed", "cancelled"))
    return BuildFigures(
        version, requests, delta(REQUESTS, outcome="failed"), histogram_quantile(0.95, buckets)
    )


def judge(
    before: Reading, after: Reading, name: str, serving: int, candidate: int, plan: CanaryPlan
) -> Judgement:
    old = build_figures(before, after, name, serving)
    new = build_figures(before, after, name, candidate)

    def compared(outcome: str) -> float:
        return after.total(COMPARED, name, outcome=outcome) - before.total(
            COMPARED, name, outcome=outcome
        )

    agreed = compared("agree")
    total = agreed + compared("disagree")
    breaches = []
    if new.failure_share > old.failure_share + plan.max_failures:
        breaches.append(
            f"failures: {new.failure_share:.1%} of the candidate's requests failed, "
            f"{old.failure_share:.1%} of the serving build's (at most {plan.max_failures:.1%} "
            "more allowed)"
        )
    enough = min(old.requests, new.requests) >= MIN_REQUESTS
    if enough and old.p95_s and new.p95_s and new.p95_s > plan.max_p95_ratio * old.p95_s:
        breaches.append(
            f"p95: {new.p95_s * 1000:.1f} ms against the serving build's "
            f"{old.p95_s * 1000:.1f} ms (at most {plan.max_p95_ratio:g}x allowed)"
        )
    wanted = plan.min_agreement
    if wanted is not None and total >= MIN_REQUESTS and agreed / total < wanted:
        breaches.append(
            f"agreement: {agreed:.0f} of {total:.0f} canary requests answered alike by the "
            f"serving build ({agreed / total:.1%}; at least {wanted:.0%} wanted)"
        )
    return Judgement(old, new, agreed, total, tuple(breaches))
