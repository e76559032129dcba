"""Features of the traffic a model sees, binned one way at build time (the reference profile
beside the model) and in the serving steps (the `tritonize_feature_*` metrics), so that drift
is a distance between two histograms of the same bins.

Input features come from the tokenizer step: tokens per text, truncation, the share of
unknown tokens, the Unicode scripts of the letters, the share of symbols (code and markup are
full of them). Prediction features come from the step that sees the answer: a classifier's
label and top-1 confidence, an embedding's cosine to the reference centroid.

The serving side counts into numpy arrays and hands them to Triton's metrics at most once a
second: one call per changed bin then, instead of one per bin per request. What a quiet
model counted last is handed over with its next request, or when it unloads.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common import metric_labels, model_parameters

INPUT, PREDICTION = "input", "prediction"
PSI, TVD = "psi", "tvd"  # population stability index; total variation distance
PROFILE = "profile.json"

# Drift thresholds: PSI over 0.25 is the usual "major shift"; TVD is the share of the mass
# that moved, for categories and zero-heavy features where PSI swings with tiny shares.
PSI_THRESHOLD, TVD_THRESHOLD = 0.25, 0.2


@dataclass(frozen=True)
class Feature:
    """One binned feature: numeric (upper `edges`, then the overflow bin) or categorical."""

    name: str
    kind: str  # INPUT or PREDICTION
    bins: tuple[str, ...]
    measure: str = PSI
    threshold: float = PSI_THRESHOLD
    edges: tuple[float, ...] = ()

    def count(self, values: np.ndarray) -> np.ndarray:
        """Observations per bin: numeric values by edge, categorical values by bin index."""
        values = np.asarray(values).reshape(-1)
        index = np.searchsorted(self.edges, values, side="left") if self.edges else values
        return np.bincount(index.astype(np.int64), minlength=len(self.bins))

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "bins": list(self.bins),
            "measure": self.measure,
            "threshold": self.threshold,
            "edges": list(self.edges),
        }

    @classmethod
    def from_json(cls, name: str, record: dict[str, Any]) -> Feature:
        return cls(
            name,
            record["kind"],
            tuple(record["bins"]),
            record["measure"],
            float(record["threshold"]),
            tuple(float(e) for e in record["edges"]),
        )


def numeric(
    name: str, kind: str, edges: tuple[float, ...], measure: str = PSI, threshold: float = 0.0
) -> Feature:
    bins = (*(f"<={edge:g}" for edge in edges), f">{edges[-1]:g}")
    limit = threshold or (PSI_THRESHOLD if measure == PSI else TVD_THRESHOLD)
    return Feature(name, kind, bins, measure, limit, edges)


def categorical(
    name: str, kind: str, categories: tuple[str, ...], threshold: float = 0.0
) -> Feature:
    return Feature(name, kind, categories, TVD, threshold or TVD_THRESHOLD)


# ------------------------------------------------------------------------------- input features

# Letters by script: (first, last code point, script). Other letters beyond ASCII are "other";
# ASCII digits, punctuation and spaces belong to no script.
_SCRIPT_RANGES = (
    (0x41, 0x5A, "latin"), (0x61, 0x7A, "latin"), (0xC0, 0x24F, "latin"),
    (0x370, 0x3FF, "greek"), (0x400, 0x52F, "cyrillic"), (0x590, 0x5FF, "hebrew"),
    (0x600, 0x6FF, "arabic"), (0x750, 0x77F, "arabic"), (0x900, 0x97F, "devanagari"),
    (0xE00, 0xE7F, "thai"), (0x1100, 0x11FF, "hangul"), (0x1E00, 0x1EFF, "latin"),
    (0x1F00, 0x1FFF, "greek"), (0x3040, 0x30FF, "kana"), (0x3130, 0x318F, "hangul"),
    (0x3400, 0x4DBF, "han"), (0x4E00, 0x9FFF, "han"), (0xAC00, 0xD7AF, "hangul"),
    (0xF900, 0xFAFF, "han"), (0xFB50, 0xFDFF, "arabic"), (0xFE70, 0xFEFF, "arabic"),
    (0x20000, 0x2FA1F, "han"),
)  # fmt: skip
SCRIPTS = (
    "latin", "greek", "cyrillic", "hebrew", "arabic", "devanagari", "thai", "hangul", "kana",
    "han", "other",
)  # fmt: skip
_STARTS = np.array([first for first, _, _ in _SCRIPT_RANGES], dtype=np.int64)
_ENDS = np.array([last for _, last, _ in _SCRIPT_RANGES], dtype=np.int64)
_SCRIPT_OF_RANGE = np.array([SCRIPTS.index(script) for *_, script in _SCRIPT_RANGES])
_OTHER, _NONE = SCRIPTS.index("other"), len(SCRIPTS)
_SYMBOL = np.zeros(128, dtype=bool)
_SYMBOL[[ord(c) for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"]] = True
# Features look at a bounded prefix of each text, as the tokenizer does.
FEATURE_CHARS = 4096

INPUT_FEATURES = (
    numeric("tokens", INPUT, (4, 8, 12, 16, 24, 32, 48, 64, 128, 256)),
    categorical("truncated", INPUT, ("no", "yes"), threshold=0.1),
    numeric("unknown_tokens", INPUT, (0, 0.05, 0.2), measure=TVD, threshold=0.1),
    categorical("script", INPUT, SCRIPTS),
    numeric("symbols", INPUT, (0.02, 0.05, 0.1, 0.2, 0.35)),
)


def code_points(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(every text's code points, concatenated; the index of the text each one is from)."""
    texts = [text[:FEATURE_CHARS] for text in texts]
    points = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    owner = np.repeat(np.arange(len(texts)), [len(text) for text in texts])
    return points, owner


def script_of(points: np.ndarray) -> np.ndarray:
    """Each code point's index in SCRIPTS, or len(SCRIPTS) for non-letters (ASCII digits,
    punctuation, spaces)."""
    where = np.searchsorted(_STARTS, points, side="right") - 1
    inside = (where >= 0) & (points <= _ENDS[np.maximum(where, 0)])
    scripts = np.where(inside, _SCRIPT_OF_RANGE[np.maximum(where, 0)], _NONE)
    beyond_ascii = (points >= 0x80) & ~inside & ~_is_space_or_punctuation(points)
    return np.where(beyond_ascii, _OTHER, scripts)


def _is_space_or_punctuation(points: np.ndarray) -> np.ndarray:
    """Punctuation, symbols and emoji beyond ASCII: not letters of any script."""
    return (
        ((points >= 0x2000) & (points <= 0x2BFF))
        | ((points >= 0x1F000) & (points <= 0x1FAFF))
        | ((points >= 0x3000) & (points <= 0x303F))
        | ((points >= 0xFF00) & (points <= 0xFF0F))
        | (points == 0xA0)
    )


def input_counts(
    texts: list[str], tokens: np.ndarray, truncated: np.ndarray, unknown: np.ndarray
) -> dict[str, np.ndarray]:
    """Counts per bin of every input feature for one batch of texts; `tokens`, `truncated`
    and `unknown` (unknown tokens) are per text."""
    tokens = np.asarray(tokens, dtype=np.float64).reshape(-1)
    points, owner = code_points(texts)
    scripts = script_of(points)
    symbols = np.bincount(owner, weights=_SYMBOL[np.minimum(points, 127)] & (points < 128),
                          minlength=len(texts))  # fmt: skip
    visible = np.bincount(owner, weights=points > 32, minlength=len(texts))
    by_name = {feature.name: feature for feature in INPUT_FEATURES}
    return {
        "tokens": by_name["tokens"].count(tokens),
        "truncated": by_name["truncated"].count(np.asarray(truncated, dtype=np.int64)),
        "unknown_tokens": by_name["unknown_tokens"].count(
            np.asarray(unknown, dtype=np.float64).reshape(-1) / np.maximum(tokens, 1)
        ),
        "script": np.bincount(scripts[scripts < _NONE], minlength=len(SCRIPTS)),
        "symbols": by_name["symbols"].count(symbols / np.maximum(visible, 1)),
    }


# -------------------------------------------------------------------------- prediction features

CONFIDENCE_EDGES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
COSINE_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def label_features(labels: list[str]) -> tuple[Feature, Feature]:
    """A classifier's predicted label and top-1 confidence."""
    return (
        categorical("label", PREDICTION, tuple(labels)),
        numeric("confidence", PREDICTION, CONFIDENCE_EDGES),
    )


def label_counts(features: tuple[Feature, ...], probabilities: np.ndarray) -> dict[str, np.ndarray]:
    label, confidence = features
    return {
        label.name: label.count(probabilities.argmax(axis=1)),
        confidence.name: confidence.count(probabilities.max(axis=1)),
    }


CENTROID_COSINE = numeric("centroid_cosine", PREDICTION, COSINE_EDGES)


def centroid_cosines(embeddings: np.ndarray, centroid: np.ndarray) -> np.ndarray:
    """Each embedding's cosine to the reference centroid."""
    vectors = embeddings.astype(np.float64)
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(centroid)
    return (vectors @ centroid) / np.maximum(norms, 1e-12)


# ------------------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class Profile:
    """The reference: features, their bin shares, and what the steps need to measure live."""

    features: tuple[Feature, ...]
    shares: dict[str, list[float]]
    texts: int
    source: str
    centroid: tuple[float, ...] = ()

    def of_kind(self, kind: str) -> tuple[Feature, ...]:
        return tuple(feature for feature in self.features if feature.kind == kind)

    def to_json(self) -> dict[str, Any]:
        return {
            "texts": self.texts,
            "source": self.source,
            "features": {
                f.name: {**f.to_json(), "shares": self.shares[f.name]} for f in self.features
            },
            "centroid": list(self.centroid),
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Profile:
        items = record["features"].items()
        return cls(
            features=tuple(Feature.from_json(name, value) for name, value in items),
            shares={name: [float(s) for s in value["shares"]] for name, value in items},
            texts=int(record["texts"]),
            source=str(record["source"]),
            centroid=tuple(float(x) for x in record.get("centroid", [])),
        )

    @classmethod
    def read(cls, path: Path) -> Profile | None:
        """The profile at `path`, or None where the build wrote none."""
        return cls.from_json(json.loads(path.read_text())) if path.exists() else None


def shares(counts: np.ndarray) -> list[float]:
    total = float(np.sum(counts))
    return [round(float(c) / total, 6) if total else 0.0 for c in counts]


# ---------------------------------------------------------------------------- the serving side


def feature_metrics(pb_utils: Any, args: dict[str, str], kind: str) -> FeatureMetrics | None:
    """A step's live features of `kind`, where its ensemble's build wrote a profile (the
    ensemble is named by the step's `ensemble` parameter; its version is the step's)."""
    ensemble = model_parameters(args).get("ensemble")
    if not ensemble:
        return None
    path = Path(args["model_repository"]).parent / ensemble / args["model_version"] / PROFILE
    profile = Profile.read(path)
    if profile is None or not profile.of_kind(kind):
        return None
    return FeatureMetrics(pb_utils, ensemble, profile, kind)


def embedding_counts(embeddings: np.ndarray, centroid: np.ndarray) -> dict[str, np.ndarray]:
    return {CENTROID_COSINE.name: CENTROID_COSINE.count(centroid_cosines(embeddings, centroid))}


class FeatureMetrics:
    """Live feature counts as `tritonize_feature_observations_total{model,kind,feature,bin}`,
    with the reference's shares and each feature's threshold as gauges beside them
    (`tritonize_feature_reference_share`, `tritonize_feature_drift_threshold`), so that
    Prometheus alone can compute drift."""

    FLUSH_EVERY_S = 1.0

    def __init__(self, pb_utils: Any, model: str, profile: Profile, kind: str) -> None:
        family = pb_utils.MetricFamily
        self.features = profile.of_kind(kind)
        self.centroid = np.asarray(profile.centroid, dtype=np.float64)
        # Families must outlive their metrics, so both are kept on the instance.
        self.families = (
            family(
                name="tritonize_feature_observations_total",
                description="Observations of each traffic feature, by bin",
                kind=family.COUNTER,
            ),
            family(
                name="tritonize_feature_reference_share",
                description="Each bin's share in the build's reference profile",
                kind=family.GAUGE,
            ),
            family(
                name="tritonize_feature_drift_threshold",
                description="The drift above which a feature counts as moved",
                kind=family.GAUGE,
            ),
        )
        observations, reference, threshold = self.families
        self.counters: dict[str, list[Any]] = {}
        self.pending: dict[str, np.ndarray] = {}
        self.gauges: list[Any] = []  # a metric that is collected leaves /metrics
        for feature in self.features:
            labels = {**metric_labels(model), "kind": kind, "feature": feature.name}
            self.counters[feature.name] = [
                observations.Metric(labels={**labels, "bin": b}) for b in feature.bins
            ]
            for b, share in zip(feature.bins, profile.shares[feature.name], strict=True):
                self.gauges.append(reference.Metric(labels={**labels, "bin": b}))
                self.gauges[-1].set(share)
            self.gauges.append(threshold.Metric(labels={**labels, "measure": feature.measure}))
            self.gauges[-1].set(feature.threshold)
            self.pending[feature.name] = np.zeros(len(feature.bins), dtype=np.int64)
        self.flushed_at = time.monotonic()

    def add(self, counts: dict[str, np.ndarray]) -> None:
        for name, pending in self.pending.items():
            if name in counts:
                pending += counts[name]
        if time.monotonic() - self.flushed_at >= self.FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        for name, pending in self.pending.items():
            for b in np.flatnonzero(pending):
                self.counters[name][b].increment(int(pending[b]))
            pending[:] = 0
        self.flushed_at = time.monotonic()
