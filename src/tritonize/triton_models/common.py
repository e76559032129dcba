"""Names and helpers shared by the Python-backend models and the repository writer."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Public tensors of the ensembles (see the README) and the internal ones between steps.
TEXT = "TEXT"
EMBEDDING = "EMBEDDING"
LABEL = "LABEL"
SCORE = "SCORE"
PROBABILITIES = "PROBABILITIES"
TRUNCATED = "TRUNCATED"
QUERY = "QUERY"  # rerank: the query of each (QUERY, TEXT) pair
QUESTION = "QUESTION"
CONTEXT = "CONTEXT"
ANSWER = "ANSWER"
START = "START"
END = "END"
ENTITIES = "ENTITIES"
MODEL_VERSION = "MODEL_VERSION"  # during a canary: the build that made the response
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"  # which text of a pair each token belongs to
OFFSETS = "offsets"  # each token's character span in its text
SPECIAL_TOKENS_MASK = "special_tokens_mask"  # 1 for special and padding tokens
LOGITS = "logits"
SPAN_LOGITS = "span_logits"  # question answering: start and end logits per token


class RequestError(ValueError):
    """A request is invalid; its message names the tensor, the value and what is allowed."""


def model_parameters(args: dict[str, str]) -> dict[str, str]:
    """The string parameters of the model's config.pbtxt."""
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def version_dir(args: dict[str, str]) -> Path:
    """The directory of the model version being loaded (it holds model.py and its files)."""
    return Path(args["model_repository"]) / args["model_version"]


# `NAME.vN`: build N of NAME (tasks.build.StepNames names a build's models so).
BUILD_MARK = ".v"


def build_of(model: str) -> tuple[str, str | None]:
    """(NAME, "N") of a build's model `NAME.vN`; (model, None) for any other name."""
    name, mark, version = model.rpartition(BUILD_MARK)
    return (name, version) if mark and version.isdigit() else (model, None)


def metric_labels(model: str) -> dict[str, str]:
    """The labels of a step's custom metrics: the model's name without its build, and the
    build as `version` (dashboards and rules follow a name across builds). `pid` gives each
    stub process series of its own: Triton starts a reloaded model's new instances before the
    old ones end, and when two instances share a series, the first to end removes it while
    the other still writes to it (tritonserver dies of a corrupted heap). Queries sum over
    `pid`."""
    name, version = build_of(model)
    return {"model": name, **({"version": version} if version else {}), "pid": str(os.getpid())}


def error_responses(pb_utils: Any, count: int, message: str) -> list[Any]:
    """`count` responses that all carry `message` as their (server-side, INTERNAL) error."""
    return [pb_utils.InferenceResponse(error=pb_utils.TritonError(message)) for _ in range(count)]


def invalid_argument(pb_utils: Any, error: RequestError) -> Any:
    """The client's mistake: INVALID_ARGUMENT over gRPC, 400 over HTTP (not 500 / INTERNAL)."""
    return pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)


def rejection(pb_utils: Any, error: RequestError) -> Any:
    """A response refusing a request the client got wrong."""
    return pb_utils.InferenceResponse(error=invalid_argument(pb_utils, error))
