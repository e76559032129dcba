"""`tritonize tune` against a real tritonserver, as a user runs it.

The serving build is deliberately badly tuned: its engine's batcher waits 200 ms for company,
so one client's requests take over 200 ms, and an objective of p95 <= 150 ms rules it out while
every config without the wait meets it. The sweep must find one, write it as build 2 (which
`check` accepts and `rollout` serves), and leave the running build's config as it was."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.conftest import server_config
from tritonize.bench.space import Knobs
from tritonize.client import TritonizeClient
from tritonize.repository.builds import build_versions, serving
from tritonize.repository.configs import from_text
from tritonize.repository.writer import build_repository
from tritonize.server import LocalServer
from tritonize.spec import BuildSpec
from tritonize.tasks.build import StepNames

NAME = "sentiment"
SLOW_DELAY_US = 200_000
CLI = [sys.executable, "-m", "tritonize.cli"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path) -> Iterator[LocalServer]:
    repository = tmp_path_factory.mktemp("tune") / "repository"
    build_repository(
        BuildSpec(name=NAME, task="classification", model=classifier_dir, output=repository,
                  max_batch_size=8, max_seq_len=64, max_queue_delay_us=SLOW_DELAY_US)
    )  # fmt: skip
    with LocalServer(server_config(repository)) as server:
        yield server


def tune(server: LocalServer, report: Path, *options: str) -> subprocess.CompletedProcess[str]:
    config = server.config
    return subprocess.run(
        [*CLI, "tune", NAME, "--repository", str(config.repository), "--url", config.http_url,
         "--grpc-url", config.grpc_url, "--metrics-url", config.metrics_url,
         "--api-key", config.api_key, "--report", str(report), "--concurrency", "1",
         "--seconds", "2", "--warmup", "0.5", *options],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def loaded_engine(server: LocalServer, version: int) -> Knobs:
    import tritonclient.grpc as grpc_client

    client = grpc_client.InferenceServerClient(server.config.grpc_url)
    try:
        config = client.get_model_config(StepNames(NAME, version).engine).config
    finally:
        client.close()
    return Knobs.of(config)


def test_an_objective_nothing_meets_writes_nothing(live: LocalServer, tmp_path: Path) -> None:
    """Over HTTP alone, too: configs load through the HTTP repository API when gRPC does not
    answer (its override travels in the load request's parameters)."""
    result = tune(live, tmp_path, "--slo", "p95_ms=0.01", "--delays-us", "0",
                  "--preferred", "none", "--instances", "1", "--protocol", "http",
                  "--grpc-url", "127.0.0.1:9")  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "No config meets the objective: nothing written." in result.stdout
    assert "delay 0us, preferred -, 1 inst x auto thr | 1 |" in result.stdout
    assert "skipped" not in result.stderr
    assert build_versions(live.config.repository, NAME) == [1]
    assert loaded_engine(live, 1).max_queue_delay_us == SLOW_DELAY_US


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (("--api-key", "not-the-key"), "the server refused the API key"),
        (("--url", "127.0.0.1:9", "--grpc-url", "127.0.0.1:9"), "cannot reach"),
    ],
    ids=["wrong-key", "no-server"],
)
def test_a_server_tune_cannot_use_is_named_before_any_config(
    live: LocalServer, tmp_path: Path, options: tuple[str, ...], problem: str
) -> None:
    """Once, up front: not a "skipped" line per config and then a verdict. The default
    preferred sizes (8,16) are cut to this engine's max_batch_size of 8, not refused."""
    result = tune(live, tmp_path, "--slo", "p95_ms=100", *options)
    assert result.returncode == 1, result.stdout + result.stderr
    assert problem in result.stderr
    assert "skipped" not in result.stdout + result.stderr
    assert "[1/" not in result.stdout + result.stderr  # no config was tried


def test_tune_finds_a_config_within_the_objective_and_writes_it_as_a_build(
    live: LocalServer, tmp_path: Path
) -> None:
    repository = live.config.repository
    sweep = ("--delays-us", "0", "1000", "--preferred", "none", "4", "--instances", "1")
    result = tune(live, tmp_path, "--slo", "p95_ms=150", *sweep, "--confirm-rounds", "1")
    assert result.returncode == 0, result.stdout + result.stderr

    points = json.loads((tmp_path / "points.json").read_text())
    assert len(points) == 5  # the serving config and 2 x 2 candidates, one concurrency each
    serving_point, *candidates = points
    assert serving_point["max_queue_delay_us"] == SLOW_DELAY_US
    assert serving_point["p50_ms"] > 150 and not serving_point["meets"]
    assert all(p["meets"] and p["failures"] == 0 and p["per_second"] > 0 for p in candidates)
    assert (tmp_path / "throughput_p95.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "tune.md").read_text()
    assert report.count("| 1 |") == 5 and "**best**" in report
    assert "Written as build 2: `tritonize rollout sentiment --to 2` serves it." in report

    # The running build is as it was on disk; the winner waits as build 2.
    assert loaded_engine(live, 1).max_queue_delay_us == SLOW_DELAY_US
    assert serving(repository, NAME).version == 1  # type: ignore[union-attr]
    best = max(candidates, key=lambda p: p["per_second"])
    written = from_text((repository / StepNames(NAME, 2).engine / "config.pbtxt").read_text())
    assert Knobs.of(written).max_queue_delay_us == best["max_queue_delay_us"]
    assert list(Knobs.of(written).preferred_batch_sizes) == best["preferred_batch_sizes"]
    checked = subprocess.run([*CLI, "check", str(repository)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    rollout = subprocess.run(
        [*CLI, "rollout", NAME, "--to", "2", "--repository", str(repository),
         "--url", live.config.http_url, "--grpc-url", live.config.grpc_url,
         "--metrics-url", live.config.metrics_url, "--api-key", live.config.api_key],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rollout.returncode == 0, rollout.stdout + rollout.stderr
    with TritonizeClient(live.config.http_url, "http") as client:
        client.infer(NAME, ["the tuned build answers"])
        assert client.last_model_version == "2"
