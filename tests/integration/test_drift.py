"""Drift, live: a real tritonserver serving builds with reference profiles, a real Prometheus
with the shipped rules, traffic from held-back reference texts and then shifted traffic.

The reference-like traffic must raise no alert and leave `tritonize drift` at exit 0; each
shift (another language, far longer texts, source code, a label-skewed set) must move the
features it changes, and the alert must fire within 5 minutes of a shift."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from helpers import free_ports, wait_for
from tritonize.client import TritonizeClient
from tritonize.monitor.drift import MIN_OBSERVATIONS
from tritonize.monitor.profile import builtin_reference_texts
from tritonize.monitor.prometheus import LocalPrometheus, PrometheusSource
from tritonize.repository.writer import build_repository
from tritonize.server import LocalServer
from tritonize.spec import BuildSpec
from tritonize.triton_models.features import PROFILE, Profile

from .conftest import server_config

EMBEDDER, CLASSIFIER = "minilm", "sentiment"
CLI = [sys.executable, "-m", "tritonize.cli"]
# One pool split in two: the builds profile one half, the live traffic is drawn from the other.
POOL = builtin_reference_texts(1200, seed=7)
REFERENCE, HELD_BACK = POOL[0::2], POOL[1::2]
CYRILLIC = [
    "Мой заказ пришёл с опозданием на два дня, коробка была повреждена.",
    "Как изменить адрес электронной почты в моём аккаунте?",
    "Номер в гостинице был чистым и тихим, рядом с вокзалом.",
    "Центральный банк оставил процентные ставки без изменений.",
    "Обновление программы не устанавливается на старых ноутбуках.",
    "Спасибо за быстрый ответ, это решило мою проблему.",
]
LONG = [" ".join(REFERENCE[i : i + 12]) for i in range(0, 240, 12)]  # far past max_seq_len
CODE = [
    "def add(a: int, b: int) -> int:\n    return a + b  # sum",
    "for (int i = 0; i < n; ++i) { total += values[i] * weights[i]; }",
    "SELECT id, name FROM users WHERE created_at > '2024-01-01' ORDER BY id;",
    "if (!response.ok) { throw new Error(`HTTP ${response.status}`); }",
    "x = {k: v ** 2 for k, v in items.items() if v is not None}",
    "<div class=\"row\"><span id='a'>{{ value | safe }}</span></div>",
]


class Traffic:
    """Sends batches of texts to both models from a background thread; `texts` can change."""

    def __init__(self, url: str, api_key: str) -> None:
        self.client = TritonizeClient(url, "http", api_key=api_key)
        self.texts = {EMBEDDER: HELD_BACK, CLASSIFIER: HELD_BACK}
        self.stop = threading.Event()
        self.sending = threading.Lock()  # held while a request is in flight
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.failures: list[str] = []

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self.stop.is_set():
            with self.sending:
                for model, pool in list(self.texts.items()):
                    batch = [pool[i] for i in rng.integers(0, len(pool), 8)]
                    try:
                        self.client.infer(model, batch)
                    except Exception as exc:  # recorded, and asserted on by the tests
                        self.failures.append(repr(exc))
            time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.client.close()


@pytest.fixture(scope="module")
def drift_repository(tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path) -> Path:
    output = tmp_path_factory.mktemp("drift") / "model_repository"
    reference = output.parent / "reference.txt"
    reference.write_text("\n".join(REFERENCE) + "\n")
    builds = ((EMBEDDER, "embedding", None), (CLASSIFIER, "classification", classifier_dir))
    for name, task, model in builds:
        spec = BuildSpec(
            name=name, task=task, model=model, output=output, max_seq_len=128,
            reference_texts=reference,
        )  # fmt: skip
        build_repository(spec)
    return output


@pytest.fixture(scope="module")
def live(drift_repository: Path) -> Iterator[tuple[LocalServer, LocalPrometheus, Traffic]]:
    with LocalServer(server_config(drift_repository)) as server:
        (port,) = free_ports(1)
        with (
            LocalPrometheus(f"127.0.0.1:{server.config.metrics_port}", port=port) as prom,
            Traffic(server.config.http_url, server.config.api_key) as traffic,
        ):
            yield server, prom, traffic


def drift_cli(prometheus: LocalPrometheus, model: str, window: str) -> tuple[int, dict]:
    result = subprocess.run(
        [*CLI, "drift", model, "--prometheus", prometheus.url, "--window", window, "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def drift_alerts(prometheus: LocalPrometheus) -> list[dict]:
    query = 'ALERTS{alertname=~"TritonizeInputDrift|TritonizePredictionDrift"}'
    return [r["metric"] for r in PrometheusSource(prometheus.url).query(query)]


def test_reference_like_traffic_raises_no_alert(live: tuple) -> None:
    _, prometheus, traffic = live
    deadline = time.monotonic() + 100  # enough for the rules' `for` and their minimum count
    while time.monotonic() < deadline:
        assert drift_alerts(prometheus) == []
        time.sleep(5)
    for model in (EMBEDDER, CLASSIFIER):
        code, report = drift_cli(prometheus, model, "90s")
        assert code == 0 and report["moved"] == [], report
        values = {f["feature"]: f["value"] for f in report["features"]}
        assert all(v is not None for v in values.values()), values
        assert min(f["observations"] for f in report["features"]) >= MIN_OBSERVATIONS
    assert traffic.failures == []


def test_drift_cannot_tell_from_a_window_too_short(live: tuple) -> None:
    _, prometheus, _ = live
    result = subprocess.run(
        [*CLI, "drift", EMBEDDER, "--prometheus", prometheus.url, "--window", "1s"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "too little traffic of `minilm` in the last 1s" in result.stderr


def _independent_drift(profile: Profile, counts: dict[str, np.ndarray]) -> dict[str, float]:
    """PSI or TVD of raw counts against the profile, as the textbook writes them."""
    drift = {}
    for feature in profile.features:
        live = counts[feature.name] / counts[feature.name].sum()
        ref = np.asarray(profile.shares[feature.name])
        if feature.measure == "psi":
            p, q = np.maximum(live, 0.001), np.maximum(ref, 0.001)
            drift[feature.name] = float(np.sum((p - q) * np.log(p / q)))
        else:
            drift[feature.name] = float(0.5 * np.abs(live - ref).sum())
    return drift


def _triton_counts(metrics_port: int, model: str) -> dict[str, dict[str, float]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    counts: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if line.startswith("tritonize_feature_observations_total{") and f'model="{model}"' in line:
            inside = line[line.index("{") + 1 : line.index("}")]
            labels = {k: v.strip('"') for k, v in (p.split("=", 1) for p in inside.split(","))}
            bins = counts.setdefault(labels["feature"], {})  # one series per engine instance
            bins[labels["bin"]] = bins.get(labels["bin"], 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_prometheus_computes_the_textbook_drift(live: tuple, drift_repository: Path) -> None:
    """Over a window holding all traffic, Prometheus' drift equals PSI / TVD of Triton's raw
    counts (every series of one scrape shares its timestamps, so shares are exact)."""
    server, prometheus, traffic = live
    profile = Profile.read(drift_repository / EMBEDDER / "1" / PROFILE)
    assert profile is not None
    with traffic.sending:  # counts stand still once the steps flushed and Prometheus scraped
        time.sleep(4)
        raw = _triton_counts(server.config.metrics_port, EMBEDDER)
        _, report = drift_cli(prometheus, EMBEDDER, "1h")
    counts = {f.name: np.array([raw[f.name][b] for b in f.bins]) for f in profile.features}
    expected = _independent_drift(profile, counts)
    for feature in report["features"]:
        assert math.isclose(feature["value"], expected[feature["feature"]], abs_tol=2e-3), feature


def firing(prometheus: LocalPrometheus, alert: str, model: str, feature: str) -> bool:
    return any(
        a["alertstate"] == "firing" and (a["alertname"], a["model"], a["feature"])
        == (alert, model, feature)
        for a in drift_alerts(prometheus)
    )  # fmt: skip


def seconds_to_alert(
    live: tuple, texts: dict[str, list[str]], alert: str, model: str, feature: str
) -> float:
    """Switch the traffic to `texts`; the seconds until `alert` fires on `feature` (at most 5
    minutes, and it must not be firing before).

    An earlier shift can have moved this feature too (longer texts hold fewer symbol-heavy
    short ones, PSI 0.29 on `symbols`), so reference-like traffic first runs until the alert
    is quiet: at most the rule's 5-minute window and its evaluation."""
    _, prometheus, traffic = live
    traffic.texts = {EMBEDDER: HELD_BACK, CLASSIFIER: HELD_BACK}
    quiet = wait_for(lambda: not firing(prometheus, alert, model, feature), 420, step_s=5)
    assert quiet, f"{alert} on `{feature}` still firing after 7 minutes of reference-like traffic"
    shifted_at = time.monotonic()
    traffic.texts = texts
    fired = wait_for(lambda: firing(prometheus, alert, model, feature), 300, step_s=2)
    took = time.monotonic() - shifted_at
    assert fired, f"no {alert} on `{feature}` of `{model}` within 5 minutes of the shift"
    print(f"{alert} on {model} {feature}: fired {took:.0f} s after the shift")
    assert traffic.failures == []
    return took


# The shifts go to the embedder only: the classifier keeps reference-like traffic until its
# own shift, so that its prediction alert cannot have fired before.


def test_another_language_fires_the_input_drift_alert_within_five_minutes(live: tuple) -> None:
    cyrillic = {EMBEDDER: CYRILLIC, CLASSIFIER: HELD_BACK}
    seconds_to_alert(live, cyrillic, "TritonizeInputDrift", EMBEDDER, "script")
    code, report = drift_cli(live[1], EMBEDDER, "30s")
    assert code == 1 and "script" in report["moved"], report


@pytest.mark.parametrize(
    ("texts", "alerted", "moved"),
    [(LONG, "truncated", {"tokens", "truncated"}), (CODE, "symbols", {"symbols"})],
    ids=["far-longer-texts", "source-code"],
)
def test_each_input_shift_fires_the_alert_on_its_feature(
    live: tuple, texts: list[str], alerted: str, moved: set[str]
) -> None:
    shifted = {EMBEDDER: texts, CLASSIFIER: HELD_BACK}
    seconds_to_alert(live, shifted, "TritonizeInputDrift", EMBEDDER, alerted)
    code, report = drift_cli(live[1], EMBEDDER, "30s")
    assert code == 1 and moved <= set(report["moved"]), report


def test_a_label_skewed_set_fires_the_prediction_alert(live: tuple, classifier_dir: Path) -> None:
    """Texts the classifier (in PyTorch) gives its rarest reference label."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(classifier_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(classifier_dir)).eval()
    pool = REFERENCE + builtin_reference_texts(2000, seed=2) + CYRILLIC + CODE
    with torch.inference_mode():
        batch = tokenizer(pool, truncation=True, max_length=128, padding=True, return_tensors="pt")
        labels = model(**batch).logits.argmax(dim=1).numpy()
    reference = np.bincount(labels[: len(REFERENCE)], minlength=model.config.num_labels)
    rare = int(np.argmin(np.where(reference > 0, reference, len(labels))))
    skewed = [text for text, label in zip(pool, labels, strict=True) if label == rare]
    assert skewed, "the classifier gives no text its rarest label"
    shifted = {EMBEDDER: HELD_BACK, CLASSIFIER: skewed}
    seconds_to_alert(live, shifted, "TritonizePredictionDrift", CLASSIFIER, "label")
    code, report = drift_cli(live[1], CLASSIFIER, "30s")
    assert code == 1 and "label" in report["moved"], report
