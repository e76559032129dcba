"""A real tritonserver (the bundled binary) serving a repository built by the tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import free_ports
from tritonize.client import TritonizeClient
from tritonize.monitor.prometheus import LocalPrometheus
from tritonize.repository.writer import build_repository
from tritonize.server import LocalServer, ServerConfig
from tritonize.spec import BuildSpec

EMBEDDER = "minilm"
CLASSIFIER = "sentiment"
GENERATOR = "tiny-llama"
EMBEDDER_MAX_BATCH = 32
EMBEDDER_MAX_SEQ = 256
CLASSIFIER_MAX_SEQ = 64


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def server_config(repository: Path, **kwargs: object) -> ServerConfig:
    http, grpc, metrics = free_ports(3)
    # Tests build repositories in pytest's temporary directories: the log goes beside them.
    kwargs.setdefault("log_file", repository.parent / f"tritonize-{http}.log")
    return ServerConfig(
        repository,
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        exit_timeout_s=5,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
def repository(
    tmp_path_factory: pytest.TempPathFactory,
    classifier_dir: Path,
    tiny_decoder: Callable[[str], Path],
) -> Path:
    """Two ensembles (the bundled MiniLM, the tiny classifier), a tiny generator, and a
    hand-made broken model for the load tests' response checks, in one repository."""
    output = tmp_path_factory.mktemp("model_repository")
    build_repository(
        BuildSpec(
            name=EMBEDDER,
            task="embedding",
            output=output,
            max_batch_size=EMBEDDER_MAX_BATCH,
            max_seq_len=EMBEDDER_MAX_SEQ,
        )
    )
    build_repository(
        BuildSpec(
            name=CLASSIFIER,
            task="classification",
            model=classifier_dir,
            output=output,
            max_batch_size=8,
            max_seq_len=CLASSIFIER_MAX_SEQ,
        )
    )
    build_repository(
        BuildSpec(name=GENERATOR, task="generation", model=tiny_decoder("llama-decoder"),
                  output=output, max_seq_len=64, max_batch_size=8)
    )  # fmt: skip
    shutil.copytree(Path(__file__).parents[1] / "fixtures" / "mangled", output / "mangled")
    return output


@pytest.fixture(scope="session")
def server(repository: Path) -> Iterator[LocalServer]:
    server = LocalServer(server_config(repository))
    server.start(timeout_s=120)
    yield server
    server.stop()


# The tasks built from tiny random checkpoints (tests/fixtures/tiny_configs) for the
# `tasks_server`: name -> (task, checkpoint config).
NEW_TASKS = {
    "qa": ("question-answering", "bert-qa"),
    "reranker": ("rerank", "bert-rerank"),
    "ner": ("token-classification", "bert-ner"),
}
TASKS_MAX_BATCH = 8
TASKS_MAX_SEQ = 64


def run_verify(
    server: LocalServer, model: str, golden: Path, protocol: str
) -> subprocess.CompletedProcess[str]:
    """`tritonize verify` of `model` on `server` against `golden`, as a user runs it."""
    config = server.config
    url = config.http_url if protocol == "http" else config.grpc_url
    return subprocess.run(
        [sys.executable, "-m", "tritonize.cli", "verify", "--model", model, "--golden",
         str(golden), "--url", url, "--protocol", protocol, "--metrics-url", config.metrics_url,
         "--smoke-requests", "16"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tasks_repository(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Callable[[str], Path]
) -> Path:
    """Question answering, reranking and named entities, in one repository."""
    output = tmp_path_factory.mktemp("tasks_repository")
    for name, (task, checkpoint) in NEW_TASKS.items():
        build_repository(
            BuildSpec(name=name, task=task, model=tiny_checkpoint(checkpoint), output=output,
                      max_batch_size=TASKS_MAX_BATCH, max_seq_len=TASKS_MAX_SEQ)
        )  # fmt: skip
    return output


@pytest.fixture(scope="session")
def tasks_server(tasks_repository: Path) -> Iterator[LocalServer]:
    server = LocalServer(server_config(tasks_repository))
    server.start(timeout_s=120)
    yield server
    server.stop()


@pytest.fixture(params=["http", "grpc"])
def tasks_client(
    request: pytest.FixtureRequest, tasks_server: LocalServer
) -> Iterator[TritonizeClient]:
    """A client of the `tasks_server`, over each protocol."""
    config = tasks_server.config
    url = config.http_url if request.param == "http" else config.grpc_url
    with TritonizeClient(url, request.param, api_key=config.api_key) as client:
        yield client


@pytest.fixture(scope="session")
def prometheus(server: LocalServer) -> Iterator[LocalPrometheus]:
    """A real Prometheus scraping the session's Triton every second."""
    (port,) = free_ports(1)
    with LocalPrometheus(f"127.0.0.1:{server.config.metrics_port}", port=port) as running:
        yield running


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, server: LocalServer) -> Iterator[TritonizeClient]:
    url = server.config.http_url if request.param == "http" else server.config.grpc_url
    with TritonizeClient(url, request.param, api_key=server.config.api_key) as client:
        yield client


@pytest.fixture
def http_client(server: LocalServer) -> Iterator[TritonizeClient]:
    with TritonizeClient(server.config.http_url, "http", api_key=server.config.api_key) as c:
        yield c
