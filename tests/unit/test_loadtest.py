"""Load-test logic without a server: SLO files, gates, response checks, shapes, the report."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tritonize.cli import duration
from tritonize.errors import SpecError
from tritonize.loadtest.checks import response_problem
from tritonize.loadtest.runner import LoadTest, LoadTestResult
from tritonize.loadtest.shapes import Ramp, Spike, Steady
from tritonize.loadtest.slo import ClientFigures, Slo, evaluate, load_client_figures
from tritonize.monitor.figures import ServerFigures

ROOT = Path(__file__).parents[2]
CLIENT = ClientFigures(requests=1000, failures=2, rps=100.0, avg_ms=20, p50_ms=18, p95_ms=40,
                       p99_ms=80)  # fmt: skip
SERVER = ServerFigures(model="m", seconds=10, successes=998, avg_latency_ms=15, queue_ms=3,
                       achieved_batch_size=4.0)  # fmt: skip


def test_slo_file_overlays_scenario_on_defaults() -> None:
    steady = Slo.from_file(ROOT / "loadtests" / "slo.yaml", "steady")
    assert steady.p95_ms == 1000 and steady.min_batch_size == 2  # defaults, then steady's own
    assert Slo.from_file(ROOT / "loadtests" / "slo.yaml", "spike").p95_ms == 1500


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("defaults: {p95: 10}", "unknown key.*p95.*allowed"),
        ("defaults: {p95_ms: fast}", "`p95_ms` = 'fast' is not a number"),
        ("defaults: [", "cannot read SLO file"),
    ],
)
def test_bad_slo_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "slo.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message):
        Slo.from_file(path, "steady")


def test_every_gate_can_pass_and_fail() -> None:
    generous = Slo(p95_ms=50, p99_ms=100, max_failure_ratio=0.01, min_throughput_rps=50,
                   max_queue_share=0.5, min_batch_size=2)  # fmt: skip
    assert all(g.passed for g in evaluate(generous, CLIENT, SERVER))
    strict = Slo(p95_ms=30, p99_ms=50, max_failure_ratio=0.001, min_throughput_rps=500,
                 max_queue_share=0.1, min_batch_size=8)  # fmt: skip
    gates = evaluate(strict, CLIENT, SERVER)
    assert [g.name for g in gates if not g.passed] == [
        "p95_ms", "p99_ms", "max_failure_ratio", "min_throughput_rps", "max_queue_share",
        "min_batch_size",
    ]  # fmt: skip
    assert gates[0].describe() == "FAIL  p95_ms: 40 (limit 30)"


def test_server_gates_fail_without_server_figures() -> None:
    (gate,) = evaluate(Slo(min_batch_size=2), CLIENT, None)
    assert not gate.passed and gate.describe().endswith("n/a (limit 2)")


def test_criteria_that_do_not_apply_are_skipped_with_a_note() -> None:
    """A generation model has no engine step: the shipped SLO's batch size cannot apply."""
    generator = replace(SERVER, achieved_batch_size=None)
    slo = Slo.from_file(ROOT / "loadtests" / "slo.yaml", "steady")
    reason = "`tiny-llama` has no engine step whose batches to count"
    gates = evaluate(slo, replace(CLIENT, failures=0), generator, {"min_batch_size": reason})
    (batch,) = [g for g in gates if g.name == "min_batch_size"]
    assert batch.passed and batch.describe() == f"SKIP  min_batch_size: does not apply: {reason}"
    assert all(g.passed for g in gates), [g.describe() for g in gates]


def result_of(client: ClientFigures, server_successes: float, **test: object) -> LoadTestResult:
    server = replace(SERVER, successes=server_successes)
    return LoadTestResult(test=LoadTest(model="m", **test), seconds=10, client=client,  # type: ignore[arg-type]
                          server=server, server_source="test", gates=[], direct=server)  # fmt: skip


def test_consistency_allows_a_request_in_flight_per_user_at_low_throughput() -> None:
    """8 users at 10 req/s: Triton counted the 8 requests Locust stopped in flight."""
    slow = replace(CLIENT, requests=100, failures=0, rps=10.0)
    assert result_of(slow, 108, users=8).consistent
    assert result_of(slow, 108, users=8).passed
    assert not result_of(slow, 125, users=8).consistent  # beyond in-flight + 2%: lost requests
    assert not result_of(slow, 108, users=8, scenario="smoke").consistent  # smoke runs one user


def test_a_run_without_a_success_fails() -> None:
    nothing = replace(CLIENT, requests=0, failures=0, rps=0.0)
    result = result_of(nothing, 0)
    assert not result.passed
    assert result.failures()[0].startswith("FAIL  successes: none of 0 requests succeeded")


@pytest.mark.parametrize("problem", ["missing", "empty", "directory"])
def test_unusable_texts_file_is_refused(tmp_path: Path, problem: str) -> None:
    path = {"missing": tmp_path / "absent.txt", "empty": tmp_path / "empty.txt",
            "directory": tmp_path}[problem]  # fmt: skip
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(SpecError, match=f"`--texts-file` {path}"):
        LoadTest(model="m", texts_file=path)


def test_smoke_report_names_the_one_user_it_ran(tmp_path: Path) -> None:
    from tritonize.loadtest.report import summary_markdown

    result = result_of(CLIENT, 998, scenario="smoke", users=8, out=tmp_path)
    assert ", 1 user, 10 s;" in summary_markdown(result, with_throughput_plot=False)


def test_client_figures_from_locust_csv(tmp_path: Path) -> None:
    path = tmp_path / "locust_stats.csv"
    path.write_text(
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
        "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,"
        "75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%\n"
        "HTTP,minilm,500,5,30,31.5,9,120,1536,50.2,0.5,30,33,35,37,41,45,50,54,62,70,70\n"
        ",Aggregated,500,5,30,31.5,9,120,1536,50.2,0.5,30,33,35,37,41,45,50,54,62,70,70\n"
    )
    figures = load_client_figures(path)
    assert (figures.requests, figures.failures, figures.p95_ms, figures.rps) == (500, 5, 45, 50.2)
    assert figures.failure_ratio == 0.01


METADATA = {"outputs": [{"name": "EMBEDDING", "shape": ["-1", "4"]},
                        {"name": "TRUNCATED", "shape": [-1, 1]}]}  # fmt: skip


def unit_rows(rows: int) -> dict[str, np.ndarray]:
    return {
        "EMBEDDING": np.tile([1.0, 0.0, 0.0, 0.0], (rows, 1)).astype(np.float32),
        "TRUNCATED": np.zeros((rows, 1), dtype=bool),
    }


def test_response_checks() -> None:
    assert response_problem(unit_rows(2), 2, METADATA) is None
    assert "shape [3, 4], expected [2, 4]" in str(response_problem(unit_rows(3), 2, METADATA))
    wrong = unit_rows(1)
    wrong["EMBEDDING"] = wrong["EMBEDDING"] * 2
    assert "not L2-normalised" in str(response_problem(wrong, 1, METADATA))
    wrong["EMBEDDING"][0, 0] = np.nan
    assert "non-finite" in str(response_problem(wrong, 1, METADATA))
    wrong = unit_rows(1)
    del wrong["TRUNCATED"]
    assert response_problem(wrong, 1, METADATA) == "output `TRUNCATED` is missing"
    labels = {"outputs": [{"name": "LABEL", "shape": [-1, 1]}]}
    assert "empty string" in str(response_problem({"LABEL": np.array([[b""]])}, 1, labels))


def test_duration_parser() -> None:
    assert [duration(t) for t in ("90", "90s", "2m", "1h30m", "1.5")] == [90, 90, 120, 5400, 1.5]
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        duration("soon")


def options(**kwargs: object) -> SimpleNamespace:
    defaults = {
        "scenario_users": 16, "scenario_seconds": 100.0, "step_seconds": 10.0,
        "ramp_p95_ms": 100.0, "ramp_max_failure_ratio": 0.01, "ramp_report": None,
    }  # fmt: skip
    return SimpleNamespace(**{**defaults, **kwargs})


def shape(cls: type, parsed: SimpleNamespace, stats: object = None) -> object:
    instance = cls()
    instance.runner = SimpleNamespace(environment=SimpleNamespace(parsed_options=parsed),
                                      stats=stats)  # fmt: skip
    return instance


def test_steady_and_spike_shapes() -> None:
    assert shape(Steady, options()).at(5) == (16, 16)
    spike = shape(Spike, options())
    assert [spike.at(t)[0] for t in (10, 45, 70)] == [3, 16, 3]


class FakeStats:
    """Cumulative request counts and a p95 that rises with the step."""

    def __init__(self) -> None:
        self.total = self
        self.num_requests = 0
        self.num_failures = 0
        self.p95 = 0.0

    def get_current_response_time_percentile(self, percent: float) -> float:
        return self.p95


def test_ramp_finds_the_knee(tmp_path: Path) -> None:
    report = tmp_path / "ramp.json"
    stats = FakeStats()
    ramp = shape(Ramp, options(ramp_report=str(report)), stats)
    ticks = []
    for step in range(8):
        ramp.get_run_time = lambda step=step: step * 10.0 + 0.5
        stats.num_requests += 100
        stats.p95 = 40.0 * (step - 1)  # of the step just ended: 0, 40, 80, then 120 > 100 ms
        tick = ramp.tick()
        ticks.append(tick)
        if tick is None:
            break
    assert ticks[:4] == [(2, 2), (4, 4), (6, 6), (8, 8)] and ticks[4] is None
    result = json.loads(report.read_text())
    assert result["breached"] is True
    assert result["knee"]["users"] == 6 and len(result["steps"]) == 4


def test_report_writes_markdown_and_plots(tmp_path: Path) -> None:
    from tritonize.loadtest.report import write_report

    (tmp_path / "locust_stats_history.csv").write_text(
        "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,95%\n"
        + "".join(f"{1000 + t},{min(t, 4)},,Aggregated,{10 * t},0,20,{30 + t}\n" for t in range(10))
    )
    test = LoadTest(model="minilm", out=tmp_path)
    result = LoadTestResult(test=test, seconds=10, client=CLIENT, server=SERVER,
                            server_source="test", gates=evaluate(Slo(p95_ms=30), CLIENT, SERVER),
                            direct=SERVER)  # fmt: skip
    markdown = write_report(result, tmp_path).read_text()
    assert "FAILED" in markdown and "FAIL  p95_ms: 40 (limit 30)" in markdown
    assert "| achieved engine batch size | 4.00 |" in markdown
    for image in ("throughput_latency.png", "latency_breakdown.png"):
        assert (tmp_path / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "summary.json").exists()
    assert result.failures() == ["FAIL  p95_ms: 40 (limit 30)"]


@pytest.mark.parametrize(
    ("url", "metrics"),
    [
        ("10.0.0.5:9000", "http://10.0.0.5:8002/metrics"),
        ("http://triton.example:8001/", "http://triton.example:8002/metrics"),
        ("[::1]:8000", "http://[::1]:8002/metrics"),
    ],
)
def test_default_metrics_url_is_port_8002_on_the_servers_host(url: str, metrics: str) -> None:
    from tritonize.monitor.scrape import default_metrics_url

    assert default_metrics_url(url) == metrics


def test_client_urls_are_host_port() -> None:
    from tritonize.client import host_port
    from tritonize.errors import InferenceError

    assert host_port("http://127.0.0.1:8000/") == "127.0.0.1:8000"
    assert host_port("[::1]:8001") == "[::1]:8001"
    for bad in ("localhost", "127.0.0.1:http", "127.0.0.1:8000/v2", ":8000", "127.0.0.1:99999",
                "127.0.0.1:0"):  # fmt: skip
        with pytest.raises(InferenceError, match="is not HOST:PORT"):
            host_port(bad)
