"""Load scenarios as Locust `LoadTestShape`s, chosen by name.

Each reads its size from the command line (`--scenario-users`, `--scenario-seconds`,
`--step-seconds`) so that one locustfile serves every scenario.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import locust.stats
from locust import LoadTestShape

Tick = tuple[int, float] | None


class ScenarioShape(LoadTestShape):
    abstract = True

    @property
    def options(self) -> Any:
        assert self.runner is not None  # Locust sets it before the first tick
        return self.runner.environment.parsed_options

    @property
    def users(self) -> int:
        return int(self.options.scenario_users)

    @property
    def seconds(self) -> float:
        return float(self.options.scenario_seconds)

    def tick(self) -> Tick:
        elapsed = self.get_run_time()
        return None if elapsed >= self.seconds else self.at(elapsed)

    def at(self, elapsed: float) -> Tick:
        raise NotImplementedError


class Smoke(ScenarioShape):
    """One user: wiring and correctness."""

    def at(self, elapsed: float) -> Tick:
        return 1, 1


class Steady(ScenarioShape):
    """N users for the whole run: the SLO gate."""

    def at(self, elapsed: float) -> Tick:
        return self.users, self.users


class Soak(Steady):
    """Steady load for a long time: leaks and drift show in the report's time series."""


class Spike(ScenarioShape):
    """A fifth of N, then all N within a second for a fifth of the run, then back down."""

    def at(self, elapsed: float) -> Tick:
        baseline = max(1, self.users // 5)
        if 0.4 * self.seconds <= elapsed < 0.6 * self.seconds:
            return self.users, self.users
        return baseline, self.users


@dataclass(frozen=True)
class Step:
    users: int
    requests: int
    rps: float
    p95_ms: float
    failure_ratio: float


class Ramp(ScenarioShape):
    """Add users step by step until p95 or the failure ratio breaks the SLO: the knee.

    The steps and the knee (the last step within the SLO) go to `--ramp-report` as JSON.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps: list[Step] = []
        self._mark = (0.0, 0, 0)  # time, requests, failures at the start of the step

    def tick(self) -> Tick:
        elapsed = self.get_run_time()
        step_seconds = float(self.options.step_seconds)
        # Locust's "current" percentiles cover a sliding window: make it one step long.
        locust.stats.CURRENT_RESPONSE_TIME_PERCENTILE_WINDOW = max(2, int(step_seconds))
        index = int(elapsed // step_seconds)
        # When a step has just ended, measure it before starting the next one.
        step_ended = index > len(self.steps)
        if (step_ended and self._close_step(elapsed)) or self._step_users(index) > self.users:
            self._write_report()
            return None
        if elapsed >= self.seconds:
            self._write_report()
            return None
        users = self._step_users(index)
        return users, users

    def _step_users(self, index: int) -> int:
        return max(1, self.users // 8) * (index + 1)

    def _close_step(self, elapsed: float) -> bool:
        """Record the step; True when it broke the SLO."""
        assert self.runner is not None
        total = self.runner.stats.total
        since, requests0, failures0 = self._mark
        requests = total.num_requests - requests0
        failures = total.num_failures - failures0
        self._mark = (elapsed, total.num_requests, total.num_failures)
        step = Step(
            users=self._step_users(len(self.steps)),
            requests=requests,
            rps=requests / max(elapsed - since, 1e-9),
            p95_ms=float(total.get_current_response_time_percentile(0.95) or 0.0),
            failure_ratio=failures / requests if requests else 0.0,
        )
        self.steps.append(step)
        return step.p95_ms > float(self.options.ramp_p95_ms) or step.failure_ratio > float(
            self.options.ramp_max_failure_ratio
        )

    def _within_slo(self, step: Step) -> bool:
        return step.p95_ms <= float(self.options.ramp_p95_ms) and step.failure_ratio <= float(
            self.options.ramp_max_failure_ratio
        )

    def _write_report(self) -> None:
        """Steps, whether the SLO broke, and the knee: the last step within it before that."""
        if not self.options.ramp_report:
            return
        breached = bool(self.steps) and not self._within_slo(self.steps[-1])
        good = [s for s in self.steps if self._within_slo(s)]
        knee = good[-1] if breached and good else None
        report = {
            "steps": [asdict(s) for s in self.steps],
            "breached": breached,
            "knee": asdict(knee) if knee else None,
        }
        Path(self.options.ramp_report).write_text(json.dumps(report, indent=2))


SCENARIOS: dict[str, type[ScenarioShape]] = {
    "smoke": Smoke,
    "steady": Steady,
    "ramp": Ramp,
    "spike": Spike,
    "soak": Soak,
}
