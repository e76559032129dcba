"""Read Triton's Prometheus endpoint directly (no Prometheus server needed)."""

from __future__ import annotations

import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from tritonize.errors import TritonizeError


def scrape(url: str, timeout_s: float = 5.0) -> str:
    """The text exposition served at `url` (e.g. http://127.0.0.1:8002/metrics)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return str(response.read().decode())
    except OSError as exc:
        raise TritonizeError(f"cannot scrape metrics at {url}: {exc}") from exc


def per_model(text: str, metric: str) -> dict[str, float]:
    """Sum of `metric`'s samples by `model` label (versions and GPUs added up)."""
    # The parser names counter samples `<name>_total`, whether Triton wrote the suffix or not.
    names = {metric, f"{metric}_total"}
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names and "model" in sample.labels:
                totals[sample.labels["model"]] += sample.value
    return dict(totals)


def model_value(url: str, metric: str, model: str) -> float:
    """One model's current value of `metric` (0 when it has no sample yet)."""
    return per_model(scrape(url), metric).get(model, 0.0)
