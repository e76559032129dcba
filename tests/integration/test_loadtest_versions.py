"""A model moves from version 1 to 2 under load: real Locust (HTTP, gRPC through a worker, and
streams) against the real tritonserver, and the report counts each response under the version
that made it. Nothing may fail; version 1 answers before the load, version 2 soon after."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from integration.conftest import server_config
from tritonize.client import TritonizeClient
from tritonize.loadtest.report import version_counts
from tritonize.loadtest.runner import LoadTest, LoadTestResult, run_load_test
from tritonize.server import LocalServer
from tritonize.server.admin import RepositoryAdmin

CLASSIFIER = "versioned"  # TEXT in, VERSION out: one response per request
GENERATOR = "versioned_talker"  # a prompt in, a stream of its version's words out
LOAD_SECONDS = 40.0
LOAD_AFTER_S = 15.0  # Locust started and its users running
SETTLE_S = 3  # a version-1 request in flight as version 2 became ready may end this late

# Answers with the version that runs it: which version made a response shows in the response.
MODEL_PY = """
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.version = args["model_version"]
        config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)

    def execute(self, requests):
        if self.decoupled:
            for request in requests:
                self._stream(request)
            return None
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        rows = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().shape[0]
        version = np.array([[self.version.encode()]] * rows, dtype=object)
        return pb_utils.InferenceResponse([pb_utils.Tensor("VERSION", version)])

    def _stream(self, request):
        sender = request.get_response_sender()
        words = pb_utils.get_input_tensor_by_name(request, "max_tokens").as_numpy()
        for _ in range(int(words.reshape(-1)[0])):
            time.sleep(0.01)
            text = np.array([[f"v{self.version} ".encode()]], dtype=object)
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", text)]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""

CLASSIFIER_CONFIG = f"""
name: "{CLASSIFIER}"
backend: "python"
max_batch_size: 8
input {{ name: "TEXT" data_type: TYPE_STRING dims: 1 }}
output {{ name: "VERSION" data_type: TYPE_STRING dims: 1 }}
version_policy {{ all {{}} }}
instance_group {{ count: 1 kind: KIND_CPU }}
"""

GENERATOR_CONFIG = f"""
name: "{GENERATOR}"
backend: "python"
max_batch_size: 8
input {{ name: "text_input" data_type: TYPE_STRING dims: 1 }}
input {{ name: "max_tokens" data_type: TYPE_INT32 dims: 1 }}
input {{ name: "stream" data_type: TYPE_BOOL dims: 1 optional: true }}
output {{ name: "text_output" data_type: TYPE_STRING dims: 1 }}
model_transaction_policy {{ decoupled: true }}
version_policy {{ all {{}} }}
instance_group {{ count: 1 kind: KIND_CPU }}
"""

MODELS = {CLASSIFIER: CLASSIFIER_CONFIG, GENERATOR: GENERATOR_CONFIG}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both models with version 1 only; version 2 waits beside the repository."""
    root = tmp_path_factory.mktemp("versions")
    for name, config in MODELS.items():
        (root / "repository" / name / "1").mkdir(parents=True)
        (root / "repository" / name / "config.pbtxt").write_text(config)
        (root / "repository" / name / "1" / "model.py").write_text(MODEL_PY)
        (root / "waiting" / name).mkdir(parents=True)
        (root / "waiting" / name / "model.py").write_text(MODEL_PY)
    return root / "repository"


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[LocalServer]:
    with LocalServer(server_config(repository)) as running:
        yield running


def load_version_2(server: LocalServer) -> tuple[float, float]:
    """Put version 2 of each model on disk and load it through the keyed repository API (its
    version policy keeps version 1 loaded); returns when the loads started and ended."""
    repository = server.config.repository
    admin = RepositoryAdmin(server.config.http_url, server.config.api_key)
    started = time.time()
    for name in MODELS:
        shutil.copytree(repository.parent / "waiting" / name, repository / name / "2")
        admin.load(name)  # returns once version 2 is ready: from now on it answers
    return started, time.time()


def under_load(server: LocalServer, out: Path) -> tuple[dict[str, LoadTestResult], float, float]:
    """HTTP users (in one Locust process), gRPC users (in a master and a worker) and streaming
    users, while version 2 loads midway."""
    config = server.config
    runs = {
        "http": LoadTest(model=CLASSIFIER, url=config.http_url, protocol="http"),
        "grpc": LoadTest(model=CLASSIFIER, url=config.grpc_url, protocol="grpc", workers=1),
        "sse": LoadTest(model=GENERATOR, url=config.http_url, protocol="sse", max_tokens=4),
    }
    results: dict[str, LoadTestResult] = {}

    def load(name: str, test: LoadTest) -> None:
        run = replace(test, users=2, seconds=LOAD_SECONDS, out=out / name,
                      metrics_url=config.metrics_url)  # fmt: skip
        results[name] = run_load_test(run)

    threads = [threading.Thread(target=load, args=item) for item in runs.items()]
    for thread in threads:
        thread.start()
    time.sleep(LOAD_AFTER_S)
    started, loaded = load_version_2(server)
    for thread in threads:
        thread.join()
    return results, started, loaded


def test_a_version_loaded_under_load_takes_over_and_every_response_is_counted(
    server: LocalServer, tmp_path: Path
) -> None:
    results, started, loaded = under_load(server, tmp_path)
    assert loaded - started < LOAD_SECONDS - LOAD_AFTER_S - 10, "the loads outlasted the run"

    assert set(results) == {"http", "grpc", "sse"}
    for name, result in results.items():
        assert result.client.requests > 20, name
        assert result.client.failures == 0, (name, result.failures())
        report = result.test.out
        counts = version_counts(report / "versions.csv")
        assert set(counts) == {"1", "2"}, (name, counts)
        # Every successful response is counted once, the worker's included.
        assert sum(sum(s.values()) for s in counts.values()) == result.client.requests, name
        # Version 1 alone until version 2 loaded; version 2 alone a moment after.
        assert min(counts["2"]) >= int(started), (name, counts, started)
        assert max(counts["1"]) <= int(loaded) + SETTLE_S, (name, counts, loaded)
        assert max(counts["2"]) >= int(loaded) + 10, (name, counts, loaded)

        summary = json.loads((report / "summary.json").read_text())
        table = {row["version"]: row for row in summary["model_versions"]}
        assert table["1"]["first_second"] == 0 and table["2"]["first_second"] > 0, table
        assert table["1"]["responses"] == sum(counts["1"].values())
        assert "## Responses by model version" in (report / "summary.md").read_text()
        assert (report / "versions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_response_names_the_version_that_made_it(server: LocalServer) -> None:
    """What the load test counts is what answered: the response's own claim agrees."""
    config = server.config
    for url, protocol in ((config.http_url, "http"), (config.grpc_url, "grpc")):
        with TritonizeClient(url, protocol) as client:
            outputs = client.infer(CLASSIFIER, ["a text"])
            assert outputs["VERSION"][0, 0].decode() == client.last_model_version, protocol
            stream = list(client.generate_versioned(GENERATOR, "a prompt", 3, stream=True))
            assert stream and all(text == f"v{v} " for text, v in stream), (protocol, stream)
