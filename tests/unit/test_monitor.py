"""Server figures from two readings of Triton's metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from tritonize.monitor.figures import Reading, Sample, figures, histogram_quantile
from tritonize.tasks.build import StepNames

METRICS = Path(__file__).parents[1] / "fixtures" / "metrics"


@pytest.fixture(scope="module")
def readings() -> tuple[Reading, Reading]:
    return (
        Reading.from_text((METRICS / "before.txt").read_text()),
        Reading.from_text((METRICS / "after.txt").read_text()),
    )


def test_figures_from_counter_deltas(readings: tuple[Reading, Reading]) -> None:
    before, after = readings
    build = StepNames("minilm", 1)  # the build the public `minilm` serves
    steps = (build.tokenizer, build.engine)
    result = figures(before, after, 10.0, "minilm", build.engine, steps)
    assert result.successes == 200
    assert result.failures == {"BACKEND": 4}  # REJECTED did not change
    assert result.failure_ratio == pytest.approx(4 / 204)
    assert result.throughput_rps == pytest.approx(20.0)
    assert result.avg_latency_ms == pytest.approx(20.0)
    assert result.queue_ms == pytest.approx(4.001)  # the steps' queues, not the ensemble's
    assert result.queue_share == pytest.approx(4.001 / 20.0)
    assert result.compute_infer_ms == pytest.approx(10.0)
    assert result.achieved_batch_size == pytest.approx(4.0)
    assert result.p95_ms == pytest.approx(42.0)  # from the summary, in ms


def test_without_steps_the_ensemble_queue_is_all_there_is(
    readings: tuple[Reading, Reading],
) -> None:
    before, after = readings
    assert figures(before, after, 10.0, "minilm").queue_ms == pytest.approx(0.001)
    assert figures(before, after, 10.0, "minilm").achieved_batch_size is None


def test_counter_names_match_with_or_without_the_parser_suffix() -> None:
    parsed = Reading([Sample("nv_inference_count_total", {"model": "m"}, 3.0)])
    stored = Reading([Sample("nv_inference_count", {"model": "m"}, 3.0)])
    assert parsed.total("nv_inference_count", "m") == stored.total("nv_inference_count", "m") == 3


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = [(10.0, 50.0), (20.0, 90.0), (50.0, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(10.0)
    assert histogram_quantile(0.7, buckets) == pytest.approx(15.0)
    assert histogram_quantile(0.95, buckets) == pytest.approx(35.0)
    assert histogram_quantile(0.95, [(10.0, 0.0), (float("inf"), 0.0)]) is None
