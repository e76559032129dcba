"""Iterating a model under load: rollout, rollback and refused candidates, as a user runs them
(the real CLI against the real tritonserver), while real Locust users (HTTP and gRPC) call the
public model all along. Nothing may fail, and each response names the build that made it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration.conftest import server_config
from tritonize.client import TritonizeClient
from tritonize.loadtest.report import version_counts
from tritonize.loadtest.runner import LoadTest, LoadTestResult, run_load_test
from tritonize.repository.builds import serving
from tritonize.repository.writer import build_repository
from tritonize.server import LocalServer
from tritonize.server.admin import RepositoryAdmin
from tritonize.spec import BuildSpec

NAME = "sentiment"
LOAD_SECONDS = 150.0
USERS_PER_PROTOCOL = 8  # 16 in all
HTTP_CONNECTIONS = 12  # an HTTP load held one client's connection about half of the time


def perturbed_checkpoint(source: Path, dest: Path) -> Path:
    """`source` with its classifier head shaken: a build of it answers otherwise."""
    import torch
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(source)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.classifier.parameters():
            parameter.add_(torch.randn_like(parameter) * 2.0)
    model.save_pretrained(dest)
    for tokenizer_file in source.glob("*.json"):
        if tokenizer_file.name != "config.json":
            shutil.copy2(tokenizer_file, dest / tokenizer_file.name)
    for name in ("vocab.txt",):
        if (source / name).exists():
            shutil.copy2(source / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path) -> Path:
    """Build 1 serves; 2 is a good candidate (the same checkpoint), 3 answers otherwise
    (perturbed weights), 4 cannot load (its tokenizer's config is broken)."""
    repository = tmp_path_factory.mktemp("rollout") / "repository"
    perturbed = perturbed_checkpoint(classifier_dir, tmp_path_factory.mktemp("perturbed"))
    for version, checkpoint in ((1, classifier_dir), (2, classifier_dir), (3, perturbed),
                                (4, classifier_dir)):  # fmt: skip
        build_repository(
            BuildSpec(name=NAME, task="classification", model=checkpoint, output=repository,
                      max_batch_size=8, max_seq_len=64, version=version)
        )  # fmt: skip
    config = repository / f"{NAME}_tokenizer.v4" / "config.pbtxt"
    config.write_text(config.read_text().replace('string_value: "64"', 'string_value: "many"'))
    return repository


@pytest.fixture(scope="module")
def server(builds: Path) -> Iterator[LocalServer]:
    with LocalServer(server_config(builds)) as running:
        yield running


@dataclass
class Step:
    command: list[str]
    returncode: int
    output: str
    seconds: float


def lifecycle(server: LocalServer, *arguments: str) -> Step:
    """One `tritonize versions|rollout|rollback` run as a user runs it."""
    config = server.config
    command = [sys.executable, "-m", "tritonize.cli", *arguments, "--repository",
               str(config.repository), "--api-key", config.api_key]  # fmt: skip
    if arguments[0] != "versions":
        command += ["--metrics-url", config.metrics_url, "--grpc-url", config.grpc_url]
    command += ["--url", config.http_url]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    return Step(
        arguments, done.returncode, done.stdout + done.stderr, time.perf_counter() - started
    )


def under_load(server: LocalServer, out: Path, work: Callable[[], None]) -> list[LoadTestResult]:
    """Run `work` while Locust users call the public model over HTTP and gRPC."""
    config = server.config
    results: list[LoadTestResult] = []

    def load(protocol: str) -> None:
        url = config.http_url if protocol == "http" else config.grpc_url
        test = LoadTest(model=NAME, url=url, protocol=protocol, users=USERS_PER_PROTOCOL,
                        seconds=LOAD_SECONDS, metrics_url=config.metrics_url,
                        out=out / protocol)  # fmt: skip
        results.append(run_load_test(test))

    threads = [threading.Thread(target=load, args=(p,)) for p in ("http", "grpc")]
    for thread in threads:
        thread.start()
    time.sleep(10)  # users ramped up
    work()
    for thread in threads:
        thread.join()
    return results


def print_figures(steps: dict[str, Step], results: list[LoadTestResult]) -> None:
    """Each step's time and exit code; each protocol's requests, failures and responses per
    build (run with `-s` to see them)."""
    print()
    for name, step in steps.items():
        print(f"{name}: exit {step.returncode} after {step.seconds:.1f} s")
    for result in results:
        counts = version_counts(result.test.out / "versions.csv")
        per_build = ", ".join(
            f"build {build} {sum(seconds.values())}" for build, seconds in sorted(counts.items())
        )
        print(f"{result.test.protocol}: {result.client.requests} requests, "
              f"{result.client.failures} failed; responses: {per_build}")  # fmt: skip


def test_rollout_rollback_and_refused_candidates_lose_no_request(
    server: LocalServer, builds: Path, tmp_path: Path
) -> None:
    steps: dict[str, Step] = {}
    finished_at: list[float] = []
    public_golden = builds / NAME / "golden.json"

    def work() -> None:
        started = time.monotonic()
        steps["rollout"] = lifecycle(server, "rollout", NAME, "--to", "2", "--sample-size", "8")
        steps["versions"] = lifecycle(server, "versions", NAME, "--json")
        steps["rollback"] = lifecycle(server, "rollback", NAME)
        steps["answers otherwise"] = lifecycle(
            server, "rollout", NAME, "--to", "3", "--golden", str(public_golden)
        )
        steps["cannot load"] = lifecycle(server, "rollout", NAME, "--to", "4")
        finished_at.append(time.monotonic() - started)

    results = under_load(server, tmp_path / "load", work)
    print_figures(steps, results)

    report = {name: (s.returncode, s.output[-1500:]) for name, s in steps.items()}
    assert steps["rollout"].returncode == 0, report
    assert "serves build 2 (was 1)" in steps["rollout"].output
    assert "golden records of the serving build: " in steps["rollout"].output
    versions = json.loads(steps["versions"].output[steps["versions"].output.index("{") :])
    assert versions["serving"] == 2
    loaded = {b["version"]: b for b in versions["builds"]}
    assert loaded[2]["state"] == "READY" and loaded[2]["memory_mib"] > 0
    assert loaded[1]["state"] == "not loaded" and loaded[3]["state"] == "not loaded"
    assert steps["rollback"].returncode == 0, report
    assert "serves build 1 again (was 2)" in steps["rollback"].output
    # A candidate that answers otherwise fails the serving build's golden check.
    assert steps["answers otherwise"].returncode == 1, report
    assert "build 3 failed its gate: golden outputs" in steps["answers otherwise"].output
    # One that cannot load is named so.
    assert steps["cannot load"].returncode == 1, report
    assert "build 4 of `sentiment` did not load" in steps["cannot load"].output
    assert finished_at and finished_at[0] < LOAD_SECONDS - 15, "the steps outlasted the load"

    # The serving build serves, untouched; the refused candidates are not loaded.
    assert serving(builds, NAME).version == 1  # type: ignore[union-attr]
    states = RepositoryAdmin(server.config.http_url, server.config.api_key).states()
    assert states[NAME] == "READY"
    # The candidate that did not load does not take the server out of rotation.
    with TritonizeClient(server.config.http_url, "http") as client:
        assert client.is_server_ready()
    for version in (2, 3, 4):
        for model in (f"{NAME}.v{version}", f"{NAME}_tokenizer.v{version}"):
            assert states.get(model) != "READY", (model, states)

    for result in results:
        assert result.client.requests > 500
        assert result.client.failures == 0, result.failures()
        # Each response names the build that made it: 1, then 2 after the rollout, then 1
        # again after the rollback; the refused builds never answered.
        report = result.test.out
        counts = version_counts(report / "versions.csv")
        assert set(counts) == {"1", "2"}, counts
        assert sum(sum(c.values()) for c in counts.values()) == result.client.requests
        assert max(counts["1"]) > max(counts["2"]) and min(counts["1"]) < min(counts["2"])
        assert "## Responses by model version" in (report / "summary.md").read_text()
        assert (report / "versions.png").exists()


def test_a_canary_serves_a_share_and_one_that_breaks_a_gate_rolls_back_by_itself(
    server: LocalServer, builds: Path, tmp_path: Path
) -> None:
    """A canary of build 2 (a quarter of the requests for 20 s, then all); then one of build 3,
    whose answers differ: the live agreement gate breaks and build 2 serves again by itself."""
    steps: dict[str, Step] = {}

    def work() -> None:
        steps["canary"] = lifecycle(server, "rollout", NAME, "--to", "2", "--sample-size", "8",
                                    "--canary", "25", "--canary-for", "20s")  # fmt: skip
        steps["broken canary"] = lifecycle(
            server, "rollout", NAME, "--to", "3", "--skip-verify", "--sample-size", "8",
            "--canary", "25", "--canary-for", "60s", "--canary-min-agreement", "0.9",
        )  # fmt: skip
        steps["rollback"] = lifecycle(server, "rollback", NAME)

    results = under_load(server, tmp_path / "load", work)
    print_figures(steps, results)

    report = {name: (s.returncode, s.output[-2000:]) for name, s in steps.items()}
    assert steps["canary"].returncode == 0, report
    assert "Canary: 25% of `sentiment`'s requests to build 2" in steps["canary"].output
    assert "serves build 2 (was 1)" in steps["canary"].output
    assert steps["broken canary"].returncode == 1, report
    assert "build 3 broke the canary's gates: agreement: " in steps["broken canary"].output
    assert "`sentiment` serves build 2" in steps["broken canary"].output
    assert steps["rollback"].returncode == 0, report
    assert serving(builds, NAME).version == 1  # type: ignore[union-attr]
    assert not (builds / NAME / "canary.json").exists()
    states = RepositoryAdmin(server.config.http_url, server.config.api_key).states()
    assert states[NAME] == "READY"
    for model in (f"{NAME}.v1", f"{NAME}.v2", f"{NAME}.v3", f"{NAME}_engine.v3"):
        assert states.get(model) != "READY", (model, states)

    for result in results:
        assert result.client.requests > 500
        assert result.client.failures == 0, result.failures()
        counts = version_counts(result.test.out / "versions.csv")
        assert set(counts) == {"1", "2", "3"}, counts
        assert sum(sum(c.values()) for c in counts.values()) == result.client.requests
        # While the canary of build 2 ran, it answered about a quarter of each second's requests.
        canary = [s for s in counts["2"] if 0 < counts["2"][s] < counts["1"].get(s, 0)]
        share = sum(counts["2"][s] for s in canary) / sum(
            counts["2"][s] + counts["1"][s] for s in canary
        )
        print(f"{result.test.protocol}: build 2's share over the canary's {len(canary)} "
              f"seconds: {share:.1%}")  # fmt: skip
        assert len(canary) >= 10 and 0.15 < share < 0.35, (len(canary), share)


def test_a_build_loading_through_grpc_does_not_hold_http_clients(server: LocalServer) -> None:
    """While a repository load over HTTP runs, Triton's HTTP frontend holds the requests of
    many HTTP connections (6 to 9 of 12 measured), not all: the lifecycle commands load through
    gRPC. Side by side: the slowest request of HTTP clients on connections of their own while
    build 2 loads over HTTP, then over gRPC."""
    config = server.config
    candidate = [f"{NAME}.v2", *(f"{NAME}_{step}.v2" for step in ("tokenizer", "engine",
                                                                  "postprocess"))]  # fmt: skip

    def slowest_while_loading(admin: RepositoryAdmin) -> list[float]:
        for model in candidate:  # the tests before may have left build 2 loaded
            admin.unload(model)
        admin.wait_until_idle(candidate, timeout_s=60)
        slowest = [0.0] * HTTP_CONNECTIONS
        done = threading.Event()

        def call(connection: int) -> None:
            with TritonizeClient(config.http_url, "http") as client:
                while not done.is_set():
                    started = time.perf_counter()
                    client.classify(NAME, ["a steady stream of requests"])
                    took = time.perf_counter() - started
                    slowest[connection] = max(slowest[connection], took)
                    time.sleep(0.02)  # paced: the clients alone do not load the cores

        callers = [threading.Thread(target=call, args=(i,)) for i in range(HTTP_CONNECTIONS)]
        for caller in callers:
            caller.start()
        time.sleep(2)
        admin.load(candidate[0])
        done.set()
        for caller in callers:
            caller.join()
        for model in candidate:
            admin.unload(model)
        admin.wait_until_idle(candidate, timeout_s=60)
        return slowest

    over_http = slowest_while_loading(RepositoryAdmin(config.http_url, config.api_key))
    over_grpc = slowest_while_loading(
        RepositoryAdmin(config.http_url, config.api_key, grpc_url=config.grpc_url)
    )
    held = sum(took > 1.0 for took in over_http)
    print(f"\nslowest of {HTTP_CONNECTIONS} HTTP connections' requests during a load: "
          f"{max(over_http):.2f} s over HTTP ({held} held over 1 s), "
          f"{max(over_grpc):.2f} s over gRPC")  # fmt: skip
    assert max(over_grpc) < 0.5 * max(over_http)


GENERATOR = "tiny-llama"


@pytest.fixture(scope="module")
def generator_builds(
    tmp_path_factory: pytest.TempPathFactory, tiny_decoder: Callable[[str], Path]
) -> Path:
    """Two builds of the tiny generator; the public generator points at build 1."""
    repository = tmp_path_factory.mktemp("generator-rollout") / "repository"
    for version in (1, 2):
        build_repository(
            BuildSpec(name=GENERATOR, task="generation", model=tiny_decoder("llama-decoder"),
                      output=repository, max_seq_len=64, max_batch_size=8, version=version)
        )  # fmt: skip
    return repository


def test_a_generator_moves_between_builds_while_streams_run(
    generator_builds: Path, tmp_path: Path
) -> None:
    """The public generator is the generator itself (a client's cancellation reaches it): a
    rollout reloads it on the other build; streams in flight finish on the one they began. A
    canary routes streams whole to one build or the other."""
    steps: dict[str, Step] = {}
    with LocalServer(server_config(generator_builds)) as server:
        config = server.config

        def work() -> None:
            steps["rollout"] = lifecycle(server, "rollout", GENERATOR, "--to", "2",
                                         "--sample-size", "4")  # fmt: skip
            steps["rollback"] = lifecycle(server, "rollback", GENERATOR)
            steps["canary"] = lifecycle(server, "rollout", GENERATOR, "--to", "2",
                                        "--sample-size", "4", "--canary", "50",
                                        "--canary-for", "15s")  # fmt: skip

        prompts = tmp_path / "prompts.txt"
        prompts.write_text("Once upon a time\nTriton serves\n")
        results: list[LoadTestResult] = []
        test = LoadTest(model=GENERATOR, url=config.http_url, protocol="sse", users=8,
                        seconds=110.0, max_tokens=16, metrics_url=config.metrics_url,
                        out=tmp_path / "load", texts_file=prompts)  # fmt: skip
        thread = threading.Thread(target=lambda: results.append(run_load_test(test)))
        thread.start()
        time.sleep(8)
        work()
        thread.join()
        states = RepositoryAdmin(config.http_url, config.api_key).states()

    report = {name: (s.returncode, s.output[-1500:]) for name, s in steps.items()}
    assert steps["rollout"].returncode == 0, report
    assert "golden records of the serving build: 3/3 agree" in steps["rollout"].output
    assert steps["rollback"].returncode == 0, report
    assert steps["canary"].returncode == 0, report
    assert "build 2: " in steps["canary"].output  # the canary's figures, as it ran
    assert serving(generator_builds, GENERATOR).version == 2  # type: ignore[union-attr]
    assert states[GENERATOR] == "READY"
    for entry in (f"{GENERATOR}.v1", f"{GENERATOR}.v2"):  # gate copies and the router's builds
        assert states.get(entry) != "READY", (entry, states)
    (result,) = results
    assert result.client.requests > 50
    assert result.client.failures == 0, result.failures()  # a stream naming two builds fails
    counts = version_counts(result.test.out / "versions.csv")
    mixed = [s for s in counts["2"] if counts["1"].get(s)]
    assert len(mixed) >= 8, counts  # the rollout's drain, and the canary's seconds
