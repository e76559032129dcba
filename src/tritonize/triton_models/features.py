"""Features of the traffic a model sees, binned one way at build time (the reference profile
beside the model) and in the serving steps (the `tritonize_feature_*` metrics), so that drift
is a distance between two histograms of the same bins.

Input features come from the tokenizer step: tokens per text, truncation, the share of
unknown tokens, the Unicode scripts of the letters, the share of symbols (code and markup are
full of them). Prediction features come from the step that sees the answer: a classifier's
label and top-1 confidence, an embedding's cosine to the reference centroid. A generator has
both in one step: its prompts' tokens and characters, its outputs' tokens and stop reasons.

The serving side counts into numpy arrays and hands them to Triton's metrics at most once a
second: one call per changed bin then, instead of one per bin per request. What a quiet
model counted last is handed over with its next request, or when it unloads.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
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
    _edges: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Once, not per request: searchsorted would turn the tuple into an array on every call.
        object.__setattr__(self, "_edges", np.asarray(self.edges, dtype=np.float64))

    def count(self, values: np.ndarray) -> np.ndarray:
        """Observations per bin: numeric values by edge, categorical values by bin index."""
        values = np.asarray(values).reshape(-1)
        index = self._edges.searchsorted(values, side="left") if self.edges else values
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

SCRIPT = categorical("script", INPUT, SCRIPTS)
SYMBOLS = numeric("symbols", INPUT, (0.02, 0.05, 0.1, 0.2, 0.35))
INPUT_FEATURES = (
    numeric("tokens", INPUT, (4, 8, 12, 16, 24, 32, 48, 64, 128, 256)),
    categorical("truncated", INPUT, ("no", "yes"), threshold=0.1),
    numeric("unknown_tokens", INPUT, (0, 0.05, 0.2), measure=TVD, threshold=0.1),
    SCRIPT,
    SYMBOLS,
)


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


# What a character counts as, in one number: its script's index in SCRIPTS, or one of three
# kinds of non-letter. The serving steps count every request, so the Basic Multilingual Plane
# is looked up in a table: a few numpy calls per request instead of a few dozen.
_SYMBOL_CLASS, _BLANK = _NONE + 1, _NONE + 2  # ASCII punctuation; spaces and controls (<= 32)
_CLASSES = _NONE + 3
_BMP = 0x10000


def _classes_by_range(points: np.ndarray) -> np.ndarray:
    classes = script_of(points)
    classes = np.where(_SYMBOL[np.minimum(points, 127)] & (points < 128), _SYMBOL_CLASS, classes)
    return np.where(points <= 32, _BLANK, classes)


_CLASS_OF_BMP = _classes_by_range(np.arange(_BMP)).astype(np.uint8)


def _classes(points: np.ndarray) -> np.ndarray:
    """Each code point's class; by range only for the rare ones beyond the BMP."""
    if not points.size or points.max() < _BMP:
        return _CLASS_OF_BMP[points]
    classes = _CLASS_OF_BMP[np.minimum(points, _BMP - 1)]
    beyond = points >= _BMP
    classes[beyond] = _classes_by_range(points[beyond].astype(np.int64))
    return classes


def character_counts(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(letters per script over all texts; symbols per text; visible characters per text),
    in each text's first FEATURE_CHARS characters."""
    texts = [text[:FEATURE_CHARS] for text in texts]
    classes = _classes(np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32))
    if len(texts) == 1:
        per_text = np.bincount(classes, minlength=_CLASSES)[None]
    else:  # one bincount for all texts: text i's characters land at i * _CLASSES + class
        owner = np.repeat(np.arange(0, len(texts) * _CLASSES, _CLASSES), [len(t) for t in texts])
        per_text = np.bincount(owner + classes, minlength=len(texts) * _CLASSES)
        per_text = per_text.reshape(len(texts), _CLASSES)
    scripts = per_text[:, :_NONE].sum(axis=0)
    return scripts, per_text[:, _SYMBOL_CLASS], per_text[:, :_BLANK].sum(axis=1)


def input_counts(
    texts: list[str], tokens: np.ndarray, truncated: np.ndarray, unknown: np.ndarray
) -> dict[str, np.ndarray]:
    """Counts per bin of every input feature for one batch of texts; `tokens`, `truncated`
    and `unknown` (unknown tokens) are per text."""
    tokens = np.asarray(tokens, dtype=np.float64).reshape(-1)
    by_name = {feature.name: feature for feature in INPUT_FEATURES}
    return {
        "tokens": by_name["tokens"].count(tokens),
        "truncated": by_name["truncated"].count(np.asarray(truncated, dtype=np.int64)),
        "unknown_tokens": by_name["unknown_tokens"].count(
            np.asarray(unknown, dtype=np.float64).reshape(-1) / np.maximum(tokens, 1)
        ),
        **text_counts(texts),
    }


def text_counts(texts: list[str]) -> dict[str, np.ndarray]:
    """The features of the characters alone: scripts, and the share of symbols."""
    scripts, symbols, visible = character_counts(texts)
    return {
        SCRIPT.name: scripts,
        SYMBOLS.name: SYMBOLS.count(symbols / np.maximum(visible, 1)),
    }


# A generator's prompts (it refuses, never truncates, a prompt over its window), and what it
# made of them: how many tokens, and why it stopped.
PROMPT_TOKENS = numeric("prompt_tokens", INPUT, (8, 16, 32, 64, 128, 256, 512, 1024, 2048))
PROMPT_FEATURES = (PROMPT_TOKENS, SCRIPT, SYMBOLS)
STOP_REASONS = ("end", "stop_word", "max_tokens", "window")  # an end id, ..., the context full
OUTPUT_TOKENS = numeric("output_tokens", PREDICTION, (1, 4, 8, 16, 32, 64, 128, 256, 512))
STOP_REASON = categorical("stop_reason", PREDICTION, STOP_REASONS)
OUTPUT_FEATURES = (OUTPUT_TOKENS, STOP_REASON)


def prompt_counts(texts: list[str], tokens: list[int]) -> dict[str, np.ndarray]:
    return {PROMPT_TOKENS.name: PROMPT_TOKENS.count(np.asarray(tokens)), **text_counts(texts)}


def output_counts(tokens: list[int], reasons: list[str]) -> dict[str, np.ndarray]:
    return {
        OUTPUT_TOKENS.name: OUTPUT_TOKENS.count(np.asarray(tokens)),
        STOP_REASON.name: STOP_REASON.count(np.array([STOP_REASONS.index(r) for r in reasons])),
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

    def of_kind(self, *kinds: str) -> tuple[Feature, ...]:
        return tuple(feature for feature in self.features if feature.kind in kinds)

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


def feature_metrics(pb_utils: Any, args: dict[str, str], *kinds: str) -> FeatureMetrics | None:
    """A step's live features of `kinds`, where its ensemble's build wrote a profile (the
    ensemble is named by the step's `ensemble` parameter; its version is the step's)."""
    ensemble = model_parameters(args).get("ensemble")
    if not ensemble:
        return None
    path = Path(args["model_repository"]).parent / ensemble / args["model_version"] / PROFILE
    profile = Profile.read(path)
    if profile is None or not profile.of_kind(*kinds):
        return None
    return FeatureMetrics(pb_utils, ensemble, profile, kinds)


def embedding_counts(embeddings: np.ndarray, centroid: np.ndarray) -> dict[str, np.ndarray]:
    return {CENTROID_COSINE.name: CENTROID_COSINE.count(centroid_cosines(embeddings, centroid))}


class FeatureMetrics:
    """Live feature counts as `tritonize_feature_observations_total{model,kind,feature,bin}`,
    with the reference's shares and each feature's threshold as gauges beside them
    (`tritonize_feature_reference_share`, `tritonize_feature_drift_threshold`), so that
    Prometheus alone can compute drift."""

    FLUSH_EVERY_S = 1.0

    def __init__(self, pb_utils: Any, model: str, profile: Profile, kinds: tuple[str, ...]) -> None:
        family = pb_utils.MetricFamily
        self.features = profile.of_kind(*kinds)
        self.lock = threading.Lock()  # a generator counts prompts and outputs in two threads
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
            labels = {**metric_labels(model), "kind": feature.kind, "feature": feature.name}
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
        with self.lock:
            for name, pending in self.pending.items():
                if name in counts:
                    pending += counts[name]
        if time.monotonic() - self.flushed_at >= self.FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        for name, pending in self.pending.items():
            for b in np.flatnonzero(pending):
                self.counters[name][b].increment(int(pending[b]))
            pending[:] = 0
        self.flushed_at = time.monotonic()
