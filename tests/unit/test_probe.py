"""The golden prober without a server: the golden file of a real build cut into records, each
record judged by the task's own check (so that the whole set passes exactly when every record
does), failures told from disagreements, and what the exporter serves, the server down."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest

from helpers import free_ports
from tritonize.errors import InferenceError, TritonizeError
from tritonize.monitor.probe import ProbeMetrics, ProbeSettings, Replayed, Round, probe
from tritonize.tasks import task_named
from tritonize.tasks.base import Outcome, RecordJudgement, golden_records
from tritonize.triton_models.common import LABEL, PROBABILITIES, SCORE, TRUNCATED

MODEL = "sentiment"


@pytest.fixture(scope="module")
def golden_path(classifier_repository: Path) -> Path:
    return classifier_repository / MODEL / "golden.json"


@pytest.fixture
def golden(golden_path: Path) -> dict[str, Any]:
    return dict(json.loads(golden_path.read_text()))


class GoldenAnswers:
    """Stands in for Triton in front of the build (unit tests start no server): answers each
    text with the golden file's own reference outputs, as a faithful deployment would, except
    where a test has it shift a text's probabilities or refuse a text."""

    def __init__(self, golden: dict[str, Any]) -> None:
        self.golden = golden
        self.shifted: dict[str, float] = {}
        self.refused: set[str] = set()

    def infer(self, model: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        rows = []
        for text in texts:
            if text in self.refused:
                raise InferenceError(f"model `{model}` at test: `TEXT` refused")
            index = self.golden["texts"].index(text)
            probabilities = np.asarray(self.golden["probabilities"][index], dtype=np.float32)
            rows.append((self.golden["labels"][index], probabilities + self.shifted.get(text, 0)))
        return {
            LABEL: np.array([[label.encode()] for label, _ in rows], dtype=object),
            SCORE: np.array([[p.max()] for _, p in rows], dtype=np.float32),
            PROBABILITIES: np.stack([p for _, p in rows]),
            TRUNCATED: np.zeros((len(rows), 1), dtype=bool),
        }


def judge_all(golden: dict[str, Any], client: GoldenAnswers) -> list[RecordJudgement]:
    task = task_named(golden["task"])
    return [task.judge_record(client, MODEL, r) for r in golden_records(golden)]  # type: ignore[arg-type]


def test_records_are_the_golden_lists_cut_one_item_each(golden: dict[str, Any]) -> None:
    records = golden_records(golden)
    assert len(records) == len(golden["texts"]) > 1
    for index, record in enumerate(records):
        assert record["texts"] == [golden["texts"][index]]
        assert record["probabilities"] == [golden["probabilities"][index]]
        assert record["labels"] == [golden["labels"][index]]
        assert record["tolerance"] == golden["tolerance"]
        assert record["interface"] == golden["interface"]


def test_records_of_unequal_counts_are_refused(golden: dict[str, Any]) -> None:
    golden["labels"] = golden["labels"][:-1]
    with pytest.raises(TritonizeError, match="unequal counts.*'labels': 7"):
        golden_records(golden)


def test_a_faithful_deployment_agrees_on_every_record(golden: dict[str, Any]) -> None:
    client = GoldenAnswers(golden)
    assert all(j.outcome is Outcome.AGREE for j in judge_all(golden, client))
    passed, _ = task_named(golden["task"]).golden_problems(client, MODEL, golden)  # type: ignore[arg-type]
    assert passed


@pytest.mark.parametrize("times_tolerance", [0.5, 2.0])
def test_a_record_is_judged_as_verify_judges_the_set(
    golden: dict[str, Any], times_tolerance: float
) -> None:
    """One text's probabilities moved: under the tolerance every record still agrees, over it
    that record alone disagrees, and the whole golden check fails with it."""
    client = GoldenAnswers(golden)
    moved = golden["texts"][2]
    client.shifted[moved] = times_tolerance * golden["tolerance"]["max_probability_diff"]
    outcomes = [j.outcome for j in judge_all(golden, client)]
    whole, _ = task_named(golden["task"]).golden_problems(client, MODEL, golden)  # type: ignore[arg-type]
    assert whole == all(o is Outcome.AGREE for o in outcomes)
    expected = [Outcome.AGREE] * len(outcomes)
    if times_tolerance > 1:
        expected[2] = Outcome.DISAGREE
    assert outcomes == expected


def test_a_failed_request_is_a_failure_not_a_disagreement(golden: dict[str, Any]) -> None:
    client = GoldenAnswers(golden)
    client.refused.add(golden["texts"][1])
    judgements = judge_all(golden, client)
    assert judgements[1] == RecordJudgement(
        Outcome.FAILED, f"model `{MODEL}` at test: `TEXT` refused"
    )
    assert {j.outcome for i, j in enumerate(judgements) if i != 1} == {Outcome.AGREE}


def test_a_stream_that_breaks_is_a_failure() -> None:
    """Generation's answer is a stream: an error in its middle is the request failing."""

    class BreakingStream:
        def generate(self, model: str, prompt: str, max_tokens: int) -> Iterator[str]:
            yield "Once"
            raise InferenceError("generation stopped: the stub died")

    record = {"task": "generation", "tolerance": {"min_common_prefix": 1.0},
              "texts": ["Once"], "continuations": [
                  {"prompt": "Once", "text": " upon a time", "max_tokens": 4}]}  # fmt: skip
    judgement = task_named("generation").judge_record(BreakingStream(), "g", record)  # type: ignore[arg-type]
    assert judgement == RecordJudgement(Outcome.FAILED, "generation stopped: the stub died")


def replayed(outcomes: list[Outcome], seconds: list[float]) -> Round:
    pairs = enumerate(zip(outcomes, seconds, strict=True))
    return Round(tuple(Replayed(i, RecordJudgement(o, ""), s) for i, (o, s) in pairs))


def test_agreement_is_a_share_of_the_judged_records() -> None:
    mixed = replayed([Outcome.AGREE, Outcome.AGREE, Outcome.DISAGREE, Outcome.FAILED],
                     [0.010, 0.020, 0.030, 0.001])  # fmt: skip
    assert mixed.agreement == pytest.approx(2 / 3) and not mixed.passed
    assert mixed.describe() == (
        "agreement 0.667 (2/3 judged), 1 failed of 4, latency p50 15.0 ms, p95 28.5 ms"
    )
    down = replayed([Outcome.FAILED] * 2, [0.001, 0.001])
    assert np.isnan(down.agreement) and not down.passed
    assert down.describe().startswith("agreement n/a (nothing judged), 2 failed of 2")
    assert replayed([Outcome.AGREE] * 3, [0.01] * 3).passed


def sample(exposition: str, name: str) -> float:
    (line,) = [line for line in exposition.splitlines() if line.startswith(name + " ")]
    return float(line.rsplit(" ", 1)[1])


def test_exporter_content_after_a_round() -> None:
    metrics = ProbeMetrics("minilm", interval_s=60)
    before = generate_latest(metrics.registry).decode()
    for outcome in ("agree", "disagree", "failed"):  # every outcome exists before a round
        assert (
            sample(before, f'tritonize_probe_requests_total{{model="minilm",outcome="{outcome}"}}')
            == 0
        )
    metrics.record(replayed([Outcome.AGREE] * 6 + [Outcome.DISAGREE, Outcome.FAILED],
                            [0.004] * 6 + [0.3, 0.02]))  # fmt: skip
    text = generate_latest(metrics.registry).decode()
    assert sample(text, 'tritonize_probe_agreement{model="minilm"}') == pytest.approx(6 / 7)
    assert sample(text, 'tritonize_probe_requests_total{model="minilm",outcome="agree"}') == 6
    assert sample(text, 'tritonize_probe_requests_total{model="minilm",outcome="disagree"}') == 1
    assert sample(text, 'tritonize_probe_requests_total{model="minilm",outcome="failed"}') == 1
    assert sample(text, 'tritonize_probe_latency_seconds_count{model="minilm"}') == 8
    assert sample(text, 'tritonize_probe_latency_seconds_bucket{le="0.005",model="minilm"}') == 6
    assert sample(text, 'tritonize_probe_latency_seconds_sum{model="minilm"}') == pytest.approx(
        0.344
    )
    assert sample(text, 'tritonize_probe_interval_seconds{model="minilm"}') == 60
    last = sample(text, 'tritonize_probe_last_round_timestamp_seconds{model="minilm"}')
    assert abs(last - time.time()) < 5


def test_the_prober_outlives_a_server_that_is_down(golden_path: Path) -> None:
    """Nothing listens at the url: each round counts every record failed and carries on; the
    endpoint serves the counts (on loopback, the default)."""
    triton, metrics_port = free_ports(2)
    settings = ProbeSettings(url=f"127.0.0.1:{triton}", model=MODEL, golden=golden_path,
                             interval_s=0.2, metrics_port=metrics_port)  # fmt: skip
    lines: list[str] = []
    stop = threading.Event()
    rounds = threading.Thread(target=probe, args=(settings, lines.append), kwargs={"stop": stop})
    rounds.start()
    try:
        deadline = time.monotonic() + 20
        while sum("nothing judged" in line for line in lines) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    finally:
        stop.set()
        rounds.join(timeout=10)
    assert not rounds.is_alive()
    records = len(json.loads(golden_path.read_text())["texts"])
    failed = sample(text, f'tritonize_probe_requests_total{{model="{MODEL}",outcome="failed"}}')
    assert failed >= 3 * records and failed % records == 0
    assert sample(text, f'tritonize_probe_requests_total{{model="{MODEL}",outcome="agree"}}') == 0
    assert np.isnan(sample(text, f'tritonize_probe_agreement{{model="{MODEL}"}}'))
    assert any(f"record 0 failed: cannot reach Triton at 127.0.0.1:{triton}" in line
               for line in lines)  # fmt: skip


def test_one_round_against_a_server_that_is_down_exits_1(golden_path: Path) -> None:
    (triton,) = free_ports(1)
    lines: list[str] = []
    settings = ProbeSettings(url=f"127.0.0.1:{triton}", model=MODEL, golden=golden_path)
    assert probe(settings, lines.append, once=True) == 1
    assert lines[-1].startswith("agreement n/a (nothing judged)")


def test_a_taken_metrics_port_is_named(golden_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = ProbeSettings(url="127.0.0.1:1", model=MODEL, golden=golden_path,
                                 metrics_port=port)  # fmt: skip
        with pytest.raises(TritonizeError, match=f"`--metrics-port` {port}.*cannot listen"):
            probe(settings, lambda line: None)


def test_an_interval_of_nothing_is_refused(golden_path: Path) -> None:
    with pytest.raises(TritonizeError, match="`--interval` 0 s: expected a positive duration"):
        ProbeSettings(url="127.0.0.1:1", model=MODEL, golden=golden_path, interval_s=0)


def test_a_file_that_is_not_golden_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "golden.json"
    path.write_text(json.dumps({"texts": ["a"]}))
    settings = ProbeSettings(url="127.0.0.1:1", model=MODEL, golden=path)
    with pytest.raises(TritonizeError, match="not a golden file written by `tritonize build`"):
        probe(settings, lambda line: None, once=True)
