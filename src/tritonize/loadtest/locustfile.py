"""Locust entry point for Triton models: `tritonize loadtest` runs it, or run it yourself.

    locust -f loadtests/locustfile.py --host 127.0.0.1:8000 --triton-model minilm TritonHttpUser
    locust -f loadtests/locustfile.py --host http://127.0.0.1:9000 --triton-model tiny-llama \
        OpenAIChatStreamUser     # through the OpenAI-compatible gateway

With TRITONIZE_SCENARIO=smoke|steady|ramp|spike|soak in the environment, that load shape
drives the users (sized by --scenario-users and --scenario-seconds).
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import locust.stats
from locust import events
from locust.env import Environment
from locust.runners import WorkerRunner

from tritonize.loadtest.shapes import SCENARIOS
from tritonize.loadtest.users import (
    OpenAIChatStreamUser,
    OpenAICompletionStreamUser,
    TritonGrpcUser,
    TritonHttpUser,
    TritonStreamUser,
)
from tritonize.loadtest.versions import VersionTally

__all__ = [
    "OpenAIChatStreamUser",
    "OpenAICompletionStreamUser",
    "TritonGrpcUser",
    "TritonHttpUser",
    "TritonStreamUser",
]


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("tritonize")
    group.add_argument("--triton-model", default="minilm", help="model (ensemble) to call")
    group.add_argument("--texts-file", default=None, help="one input text per line")
    group.add_argument("--texts-per-request", type=int, default=1)
    group.add_argument("--max-tokens", type=int, default=32, help="generation: tokens per request")
    group.add_argument("--scenario-users", type=int, default=8)
    group.add_argument("--scenario-seconds", type=float, default=60)
    group.add_argument("--step-seconds", type=float, default=15, help="ramp: seconds per step")
    group.add_argument("--ramp-p95-ms", type=float, default=float("inf"))
    group.add_argument("--ramp-max-failure-ratio", type=float, default=0.01)
    group.add_argument("--ramp-report", default=None, help="ramp: JSON file for steps and knee")
    group.add_argument("--final-stats", default=None, help="CSV file for the final request stats")
    group.add_argument(
        "--versions-csv", default=None, help="CSV file: responses per second and model version"
    )


@events.quitting.add_listener
def _write_final_stats(environment: Environment, **_kwargs: Any) -> None:
    """The request stats as the run ended, in the format of `--csv`'s `_stats.csv`.

    Locust rewrites that file once a second and not at the end, so it misses the last second's
    requests; by the time `quitting` fires the users have stopped and the stats are final.
    """
    path = environment.parsed_options.final_stats if environment.parsed_options else None
    if not path or isinstance(environment.runner, WorkerRunner):
        return
    with open(path, "w", newline="") as handle:
        writer = locust.stats.StatsCSV(environment, locust.stats.PERCENTILES_TO_REPORT)
        writer.requests_csv(csv.writer(handle))


# Responses per (second, model version) of this process; workers report theirs to the master.
_versions = VersionTally()


@events.request.add_listener
def _count_version(context: dict[str, Any] | None = None, **_kwargs: Any) -> None:
    """A response counts under the version its user put in the request event's context."""
    _versions.count(str((context or {}).get("model_version") or ""), time.time())


@events.report_to_master.add_listener
def _send_versions(data: dict[str, Any], **_kwargs: Any) -> None:
    data["model_versions"] = _versions.drain()


@events.worker_report.add_listener
def _receive_versions(data: dict[str, Any], **_kwargs: Any) -> None:
    _versions.merge(data.get("model_versions", []))


@events.quitting.add_listener
def _write_versions(environment: Environment, **_kwargs: Any) -> None:
    path = environment.parsed_options.versions_csv if environment.parsed_options else None
    if not path or isinstance(environment.runner, WorkerRunner):
        return
    _versions.write_csv(Path(path))


_scenario = os.environ.get("TRITONIZE_SCENARIO")
if _scenario:  # exactly one shape class in this module, or none
    Scenario = type("Scenario", (SCENARIOS[_scenario],), {"abstract": False})
    __all__ += ["Scenario"]
