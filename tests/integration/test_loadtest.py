"""Real Locust against the real Triton, with server figures from Triton and a real Prometheus."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tritonize.client import TritonizeClient
from tritonize.loadtest.runner import LoadTest, run_load_test
from tritonize.monitor.prometheus import LocalPrometheus
from tritonize.server import LocalServer

from .conftest import EMBEDDER, GENERATOR, free_ports

SHIPPED_SLO = Path(__file__).parents[2] / "loadtests" / "slo.yaml"


def load_test(server: LocalServer, tmp_path: Path, **kwargs: object) -> LoadTest:
    protocol = str(kwargs.pop("protocol", "http"))
    values: dict = {
        "model": EMBEDDER,
        "url": server.config.http_url if protocol == "http" else server.config.grpc_url,
        "protocol": protocol,
        "metrics_url": server.config.metrics_url,
        "scenario": "steady",
        "users": 4,
        "seconds": 6.0,
        "out": tmp_path / "report",
        **kwargs,
    }
    return LoadTest(**values)


def write_slo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "slo.yaml"
    path.write_text(text)
    return path


def test_steady_run_passes_with_a_report_and_prometheus_agrees(
    server: LocalServer, prometheus: LocalPrometheus, tmp_path: Path
) -> None:
    slo = write_slo(tmp_path, "scenarios: {steady: {p95_ms: 2000, max_failure_ratio: 0,"
                              " min_batch_size: 1, max_queue_share: 1}}")  # fmt: skip
    test = load_test(server, tmp_path, slo_file=slo, prometheus_url=prometheus.url)
    result = run_load_test(test)
    assert result.passed, result.failures()
    assert result.client.requests > 50 and result.client.failures == 0
    assert result.consistent  # Locust successes within 2% of Triton's count
    # The Prometheus path and the direct scrape read the same counters.
    direct, via_prometheus = result.direct, result.server
    assert result.server_source.startswith("Prometheus")
    assert via_prometheus.successes == direct.successes
    # Locust's final stats (written as it quits) count the requests its users finished while
    # stopping, as Triton does: the same count, not one that trails by a request per user.
    assert direct.successes == result.client.requests
    assert via_prometheus.achieved_batch_size == pytest.approx(direct.achieved_batch_size)
    assert via_prometheus.avg_latency_ms == pytest.approx(direct.avg_latency_ms)
    assert via_prometheus.queue_ms == pytest.approx(direct.queue_ms)
    assert direct.p95_ms is not None and direct.p95_ms > 0
    report = test.out
    for name in ("summary.md", "summary.json", "throughput_latency.png", "latency_breakdown.png",
                 "locust.html", "locust_stats.csv"):  # fmt: skip
        assert (report / name).stat().st_size > 0, name
    assert "PASSED" in (report / "summary.md").read_text()


def test_impossible_slo_fails_naming_the_gate(server: LocalServer, tmp_path: Path) -> None:
    slo = write_slo(tmp_path, "defaults: {p95_ms: 0.01, max_failure_ratio: 0.5}")
    result = run_load_test(load_test(server, tmp_path, scenario="smoke", seconds=3.0, slo_file=slo))
    assert not result.passed
    assert [f.split(":")[0] for f in result.failures()] == ["FAIL  p95_ms"]


def test_wrong_shaped_responses_count_as_failures(server: LocalServer, tmp_path: Path) -> None:
    result = run_load_test(load_test(server, tmp_path, model="mangled", scenario="smoke",
                                     seconds=3.0, engine_model="none"))  # fmt: skip
    assert result.client.requests > 0
    assert result.client.failures == result.client.requests
    failures = (test_dir := tmp_path / "report" / "locust_failures.csv").read_text()
    assert "output `EMBEDDING` has shape [2, 8], expected [1, -1]" in failures, test_dir
    assert not result.consistent  # Triton counted successes Locust refused
    assert not result.passed


def test_grpc_with_locust_workers(server: LocalServer, tmp_path: Path) -> None:
    """Workers exit as soon as the run ends (a second close of a gRPC channel at interpreter exit
    under gevent used to hang them until they were killed 30 s later)."""
    start = time.monotonic()
    result = run_load_test(load_test(server, tmp_path, protocol="grpc", workers=2, seconds=5.0))
    elapsed = time.monotonic() - start
    print(f"2 workers, 5 s of load: the run took {elapsed:.1f} s")
    assert result.passed, result.failures()
    assert result.client.requests > 50
    assert elapsed < 5.0 + 20  # start-up, shutdown and readings; not a 30 s wait on a worker


def test_ramp_records_steps(server: LocalServer, tmp_path: Path) -> None:
    slo = write_slo(tmp_path, "scenarios: {ramp: {p95_ms: 100000, max_failure_ratio: 0.5}}")
    start = time.monotonic()
    result = run_load_test(load_test(server, tmp_path, scenario="ramp", users=24, seconds=60.0,
                                     step_seconds=2.0, slo_file=slo))  # fmt: skip
    assert result.ramp is not None
    users = [step["users"] for step in result.ramp["steps"]]
    assert users == [3, 6, 9, 12, 15, 18, 21, 24]
    assert result.ramp["breached"] is False and result.ramp["knee"] is None
    assert time.monotonic() - start < 45  # the ramp stopped after its last step


def test_spike_scenario_recovers(server: LocalServer, tmp_path: Path) -> None:
    slo = write_slo(tmp_path, "scenarios: {spike: {max_failure_ratio: 0, p99_ms: 5000}}")
    result = run_load_test(load_test(server, tmp_path, scenario="spike", users=10, seconds=6.0,
                                     slo_file=slo))  # fmt: skip
    assert result.passed, result.failures()
    history = (tmp_path / "report" / "locust_stats_history.csv").read_text().splitlines()
    users = [int(row.split(",")[1]) for row in history[1:] if ",Aggregated," in row]
    assert max(users) == 10 and users[-1] == 2  # up to all users, then back to a fifth


def test_generation_streams_under_the_shipped_slo(server: LocalServer, tmp_path: Path) -> None:
    """The engine batch size means nothing for a generator: skipped with a note, not failed."""
    prompts = tmp_path / "prompts.txt"  # within the tiny generator's window
    prompts.write_text("Once upon a time\nThe quick brown fox\nTriton serves transformers\n")
    test = load_test(server, tmp_path, model=GENERATOR, protocol="sse", url=server.config.http_url,
                     users=2, seconds=4.0, max_tokens=4, slo_file=SHIPPED_SLO,
                     texts_file=prompts)  # fmt: skip
    result = run_load_test(test)
    (batch,) = [gate for gate in result.gates if gate.name == "min_batch_size"]
    assert batch.skipped and batch.passed, batch.describe()
    assert result.client.requests > 0 and result.client.failures == 0
    assert result.consistent, result.failures()


def test_every_request_is_counted_even_when_refused(server: LocalServer, tmp_path: Path) -> None:
    """Prompts over the window are refused: each one a Locust failure, none lost or uncounted."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\n" + "word " * 500 + "\n")
    test = load_test(server, tmp_path, model=GENERATOR, protocol="sse", url=server.config.http_url,
                     users=2, seconds=3.0, max_tokens=4, texts_file=prompts)  # fmt: skip
    result = run_load_test(test)
    assert 0 < result.client.failures < result.client.requests
    assert (test.out / "locust_exceptions.csv").read_text().count("\n") <= 1  # the header only
    failures = (test.out / "locust_failures.csv").read_text()
    assert "`text_input` is" in failures and "the context window is 64" in failures


class LaggingPrometheus(LocalPrometheus):
    """A real Prometheus that scrapes every 10 s: a busy host's late scrapes, made certain."""

    def config(self) -> dict:
        config = super().config()
        config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "10s"
        return config


def test_prometheus_reads_the_runs_window_when_scrapes_lag(
    server: LocalServer, tmp_path: Path
) -> None:
    """Traffic just before the run (as `verify` sends it) is not the run's, whatever the scrape
    interval: Prometheus is read once it has scraped the counts Triton had at each edge."""
    (port,) = free_ports(1)
    with LaggingPrometheus(f"127.0.0.1:{server.config.metrics_port}", port=port) as prometheus:
        with TritonizeClient(server.config.http_url) as client:
            for _ in range(40):
                client.embed(EMBEDDER, ["traffic before the run"])
        result = run_load_test(load_test(server, tmp_path, scenario="smoke", seconds=3.0,
                                         prometheus_url=prometheus.url))  # fmt: skip
    assert result.server_source.startswith("Prometheus")
    assert result.server.successes == result.direct.successes  # Prometheus: the same window
    assert result.direct.successes == result.client.requests > 0
