"""The new tasks through the command line, the health probe and Locust, on a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tritonize.loadtest.runner import LoadTest, run_load_test
from tritonize.server import LocalServer

from .conftest import NEW_TASKS

CLI = [sys.executable, "-m", "tritonize.cli"]
CONTEXT = "Triton Inference Server was released by NVIDIA in 2018. It serves models over HTTP."


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def infer(server: LocalServer, *args: str) -> dict:
    result = run_cli("infer", "--url", server.config.http_url, "--json", *args)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_infer_answers_each_context_with_the_question(tasks_server: LocalServer) -> None:
    out = infer(tasks_server, "qa", "--question", "Who released Triton?", CONTEXT, "Paris is big.")
    assert len(out["ANSWER"]) == 2  # one request per context, stacked
    for (answer,), (start,), (end,), context in zip(
        out["ANSWER"], out["START"], out["END"], [CONTEXT, "Paris is big."], strict=True
    ):
        assert answer == context[start:end] and answer


def test_infer_scores_each_text_against_the_query(tasks_server: LocalServer) -> None:
    out = infer(tasks_server, "reranker", "--query", "who serves models", CONTEXT, "Bananas.")
    assert len(out["SCORE"]) == 2 and all(0 < score < 1 for (score,) in out["SCORE"])
    assert out["TRUNCATED"] == [[False], [False]]


def test_infer_lists_entities_as_json(tasks_server: LocalServer) -> None:
    out = infer(tasks_server, "ner", "Angela Merkel met Macron in Paris.")
    (entities,) = out["ENTITIES"][0]
    for entity in json.loads(entities):
        assert set(entity) == {"text", "label", "score", "start", "end"}


def test_infer_without_the_question_says_how_to_give_it(tasks_server: LocalServer) -> None:
    result = run_cli("infer", "--url", tasks_server.config.http_url, "qa", CONTEXT)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "`QUESTION`, `CONTEXT`" in result.stderr and "--question" in result.stderr


def test_health_sends_each_task_its_own_request(tasks_server: LocalServer) -> None:
    config = tasks_server.config
    result = run_cli(
        "health", "--url", config.http_url, "--api-key", config.api_key, "--timeout", "60"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in NEW_TASKS:
        assert name in result.stdout


@pytest.mark.parametrize("model", sorted(NEW_TASKS))
def test_locust_checks_every_response_of_each_task(
    tasks_server: LocalServer, tmp_path: Path, model: str
) -> None:
    test = LoadTest(
        model=model, url=tasks_server.config.grpc_url, protocol="grpc",
        metrics_url=tasks_server.config.metrics_url, scenario="smoke", users=4, seconds=3.0,
        out=tmp_path / "report",
    )  # fmt: skip
    result = run_load_test(test)
    assert result.client.requests > 5 and result.client.failures == 0, result.failures()


def test_check_passes_the_built_repository(tasks_repository: Path) -> None:
    result = run_cli("check", str(tasks_repository))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in NEW_TASKS:
        assert name in result.stdout
