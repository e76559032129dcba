"""Drift: how far a window of live traffic has moved from the build's reference profile, per
feature, computed by Prometheus from the steps' metrics alone.

The serving steps export, per feature and bin, live counts
(`tritonize_feature_observations_total`), the reference profile's shares
(`tritonize_feature_reference_share`) and the feature's threshold and measure
(`tritonize_feature_drift_threshold`). One set of PromQL expressions turns them into drift: the
recording rules and alerts in monitoring/drift.yml use them over 5 minutes, `tritonize drift`
over any window. The measure is the population stability index (PSI) for ordered bins, and the
total variation distance (TVD, the share of traffic that moved) for categories and zero-heavy
features, where PSI swings with tiny shares.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from tritonize.errors import TritonizeError
from tritonize.monitor.prometheus import PrometheusSource

RULE_WINDOW = "5m"
# Fewer observations in a window tell too little to call drift: sampling noise alone moves PSI
# by about (bins - 1) / observations, so at 50 a third of reference-like windows of an 11-bin
# feature crossed 0.25; at 300 fewer than one in 200 of the noisiest kind cross any threshold.
MIN_OBSERVATIONS = 300
_FLOOR = 0.001  # shares are floored before PSI's logarithm: an empty bin is "rare", not -inf
_BY_FEATURE = "model, kind, feature"
_BY_BIN = "model, kind, feature, bin"


def _rules(window: str, where: str) -> dict[str, str]:
    """Drift's expressions in dependency order, each using the ones before it by name."""
    live = f"tritonize_feature_observations_total{where}"
    floor = _FLOOR
    return {
        "observations": f"sum by ({_BY_FEATURE}) (increase({live}[{window}]))",
        "share": (
            f"sum by ({_BY_BIN}) (increase({live}[{window}]))\n"
            f"  / on ({_BY_FEATURE}) group_left\n"
            f"sum by ({_BY_FEATURE}) (increase({live}[{window}]))"
        ),
        "reference": f"max by ({_BY_BIN}) (tritonize_feature_reference_share{where})",
        "psi": (
            f"sum by ({_BY_FEATURE}) (\n"
            f"  (clamp_min(@share, {floor}) - on ({_BY_BIN}) clamp_min(@reference, {floor}))\n"
            f"  * ln(clamp_min(@share, {floor}) / on ({_BY_BIN}) clamp_min(@reference, {floor}))\n"
            ")"
        ),
        "tvd": f"0.5 * sum by ({_BY_FEATURE}) (abs(@share - on ({_BY_BIN}) @reference))",
        "drift": (
            f'@psi and on ({_BY_FEATURE}) tritonize_feature_drift_threshold{{measure="psi"}}\n'
            f'or @tvd and on ({_BY_FEATURE}) tritonize_feature_drift_threshold{{measure="tvd"}}'
        ),
    }


def recording_rules(window: str = RULE_WINDOW) -> dict[str, str]:
    """The recording rules of monitoring/drift.yml: `tritonize:feature_<name>:<window>`."""
    return {recorded(name, window): expr for name, expr in _named(window, "").items()}


def recorded(name: str, window: str = RULE_WINDOW) -> str:
    return f"tritonize:feature_{name}:{window}"


def _named(window: str, where: str) -> dict[str, str]:
    """The rules with each `@name` reference spelled as its recorded series."""
    rules = _rules(window, where)
    for name in rules:
        rules = {
            key: expr.replace(f"@{name}", recorded(name, window)) for key, expr in rules.items()
        }
    return rules


def inline(name: str, window: str, model: str) -> str:
    """One expression for `name` over `window` for `model`, with no recording rule needed."""
    rules = _rules(window, f'{{model="{model}"}}')
    for known in rules:
        rules = {key: expr.replace(f"@{known}", f"({rules[known]})") for key, expr in rules.items()}
    return rules[name]


# ------------------------------------------------------------------------------------ reports


@dataclass
class FeatureDrift:
    """One feature's drift over the window, and the bins that moved most."""

    feature: str
    kind: str
    measure: str
    value: float | None  # None: no traffic in the window
    threshold: float
    observations: int
    moves: list[tuple[str, float, float]] = field(default_factory=list)  # bin, ref, live

    @property
    def moved(self) -> bool:
        return (
            self.value is not None
            and self.observations >= MIN_OBSERVATIONS
            and self.value > self.threshold
        )

    def describe(self) -> str:
        if self.value is None:
            figure = "no traffic in the window"
        else:
            figure = f"{self.measure} {self.value:.3f} (threshold {self.threshold:g})"
        state = "MOVED" if self.moved else "ok"
        if self.value is not None and self.observations < MIN_OBSERVATIONS:
            state = f"too few ({self.observations} < {MIN_OBSERVATIONS})"
        shifts = ", ".join(f"{b} {ref:.0%}->{live:.0%}" for b, ref, live in self.moves)
        return f"{self.kind:10} {self.feature:16} {state:8} {figure}" + (
            f"  [{shifts}]" if shifts and self.moved else ""
        )


@dataclass
class DriftReport:
    model: str
    window: str
    features: list[FeatureDrift]

    @property
    def moved(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.moved]

    @property
    def observed(self) -> bool:
        """Whether any feature saw enough traffic in the window to be judged."""
        return any(f.observations >= MIN_OBSERVATIONS for f in self.features)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "moved": [f.feature for f in self.moved]}, indent=1)


def drift_report(prometheus_url: str, model: str, window: str = "30m") -> DriftReport:
    """Every feature of `model` over the last `window`, from the Prometheus at
    `prometheus_url`."""
    source = PrometheusSource(prometheus_url)
    exported = f'tritonize_feature_drift_threshold{{model="{model}"}}'
    # One per feature, however many stub processes export it.
    thresholds = source.query(f"max by (model, kind, feature, measure) ({exported})")
    if not thresholds:
        raise TritonizeError(
            f"Prometheus at {prometheus_url} has no feature metrics of model `{model}`: is it "
            "scraping Triton, is the name the ensemble's, and was the model built with a "
            "reference profile (profile.json beside it)?"
        )
    values = _by_feature(source.query(inline("drift", window, model)))
    counts = _by_feature(source.query(inline("observations", window, model)))
    shares = _by_bin(source.query(inline("share", window, model)))
    reference = _by_bin(source.query(inline("reference", window, model)))
    features = []
    for sample in thresholds:
        labels = sample["metric"]
        key = (labels["kind"], labels["feature"])
        value = values.get(key)
        features.append(
            FeatureDrift(
                feature=labels["feature"],
                kind=labels["kind"],
                measure=labels["measure"],
                value=None if value is None or math.isnan(value) else value,
                threshold=float(sample["value"][1]),
                observations=round(counts.get(key, 0.0)),
                moves=_largest_moves(reference.get(key, {}), shares.get(key, {})),
            )
        )
    features.sort(key=lambda f: (f.kind, f.feature))
    return DriftReport(model, window, features)


def _by_feature(result: list[dict]) -> dict[tuple[str, str], float]:
    return {(r["metric"]["kind"], r["metric"]["feature"]): float(r["value"][1]) for r in result}


def _by_bin(result: list[dict]) -> dict[tuple[str, str], dict[str, float]]:
    bins: dict[tuple[str, str], dict[str, float]] = {}
    for r in result:
        labels = r["metric"]
        bins.setdefault((labels["kind"], labels["feature"]), {})[labels["bin"]] = float(
            r["value"][1]
        )
    return bins


def _largest_moves(
    reference: dict[str, float], live: dict[str, float], count: int = 3
) -> list[tuple[str, float, float]]:
    """The bins whose share changed most: (bin, reference share, live share)."""
    moves = [(b, share, live.get(b, 0.0)) for b, share in reference.items()]
    moves = [m for m in moves if not math.isnan(m[2])]
    moves.sort(key=lambda m: abs(m[2] - m[1]), reverse=True)
    return [m for m in moves[:count] if abs(m[2] - m[1]) >= 0.01]
