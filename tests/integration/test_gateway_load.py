"""Real Locust streaming through the real OpenAI-compatible gateway in front of the real
tritonserver: `tritonize loadtest --protocol openai|openai-chat`."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import free_ports
from tritonize.gateway import GatewayConfig, GatewayThread
from tritonize.loadtest.runner import LoadTest, LoadTestResult, run_load_test
from tritonize.server import LocalServer

from .conftest import GENERATOR

KEY = "l0ad-key"
MAX_TOKENS = 4


@pytest.fixture(scope="module")
def gateway(server: LocalServer) -> Iterator[GatewayThread]:
    (port,) = free_ports(1)
    config = GatewayConfig(server.config.grpc_url, api_key=KEY)
    with GatewayThread(config, port=port) as running:
        yield running


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"  # within the tiny generator's window, chat template included
    path.write_text("Once upon a time\nThe quick brown fox\nHi\n")
    return path


def run(
    server: LocalServer, gateway: GatewayThread, tmp_path: Path, texts_file: Path, protocol: str
) -> LoadTestResult:
    test = LoadTest(
        model=GENERATOR, url=server.config.http_url, metrics_url=server.config.metrics_url,
        protocol=protocol, gateway_url=gateway.url, scenario="steady", users=2, seconds=4.0,
        max_tokens=MAX_TOKENS, texts_file=texts_file, out=tmp_path / "report",
    )  # fmt: skip
    return run_load_test(test)


def stats_rows(result: LoadTestResult) -> dict[str, dict[str, str]]:
    """Locust's final stats by request type (TTFT, ITL, E2E)."""
    with (result.test.out / "locust_final_stats.csv").open() as handle:
        return {row["Type"]: row for row in csv.DictReader(handle) if row["Name"] == GENERATOR}


@pytest.mark.parametrize("protocol", ["openai", "openai-chat"])
def test_streams_through_the_gateway_count_as_tritons_requests(
    server: LocalServer, gateway: GatewayThread, tmp_path: Path, prompts: Path, protocol: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("TRITONIZE_OPENAI_API_KEY", KEY)
    result = run(server, gateway, tmp_path, prompts, protocol)
    assert result.passed, result.failures()
    assert result.client.requests > 5 and result.client.failures == 0
    # One stream through the gateway is one generation in Triton.
    assert result.consistent and result.server.successes > 5
    rows = stats_rows(result)
    assert set(rows) >= {"TTFT", "E2E"}
    assert int(rows["TTFT"]["Request Count"]) == int(rows["E2E"]["Request Count"])
    assert float(rows["TTFT"]["Median Response Time"]) <= float(rows["E2E"]["Median Response Time"])
    # E2E's length is the usage chunk's completion_tokens: 1..max_tokens per stream.
    assert 1 <= float(rows["E2E"]["Average Content Size"]) <= MAX_TOKENS
    summary = (result.test.out / "summary.md").read_text()
    assert f"{protocol.upper()} to {gateway.url} (the gateway in front of Triton" in summary


def test_a_wrong_key_fails_every_stream_naming_the_status(
    server: LocalServer, gateway: GatewayThread, tmp_path: Path, prompts: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("TRITONIZE_OPENAI_API_KEY", "wrong")
    result = run(server, gateway, tmp_path, prompts, "openai")
    assert result.client.requests > 0 and result.client.failures == result.client.requests
    assert not result.passed
    failures = (result.test.out / "locust_failures.csv").read_text()
    assert "HTTP 401: Incorrect or missing API key" in failures


def test_refused_prompts_are_failures_and_the_rest_succeed(
    server: LocalServer, gateway: GatewayThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRITONIZE_OPENAI_API_KEY", KEY)
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("Once upon a time\n" + "word " * 500 + "\n")
    result = run(server, gateway, tmp_path, mixed, "openai")
    assert 0 < result.client.failures < result.client.requests
    failures = (result.test.out / "locust_failures.csv").read_text()
    assert "HTTP 400" in failures and "context window is 64" in failures
    assert (result.test.out / "locust_exceptions.csv").read_text().count("\n") <= 1
