"""Honest answers from a real tritonserver: text with nothing in it is refused, every public step
checks its inputs, client mistakes come back as 400 / INVALID_ARGUMENT, unknown generation
fields are refused, and refused generation requests are counted."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tritonize.client import TritonizeClient, generation_input
from tritonize.monitor.scrape import read
from tritonize.server import LocalServer
from tritonize.tasks.build import StepNames

from .conftest import CLASSIFIER, EMBEDDER, GENERATOR

FAILURES = "tritonize_request_failures_total"
TRITON_FAILURES = "nv_inference_request_failure"
TRITON_SUCCESSES = "nv_inference_request_success"


def infer_json(server: LocalServer, model: str, inputs: list[dict[str, Any]]) -> requests.Response:
    """A KServe v2 JSON inference request, answered as it comes (no client-side checks)."""
    url = f"http://{server.config.http_url}/v2/models/{model}/infer"
    return requests.post(url, json={"inputs": inputs}, timeout=60)


def int64_input(name: str, values: list[list[int]]) -> dict[str, Any]:
    shape = [len(values), len(values[0]) if values else 0]
    return {"name": name, "datatype": "INT64", "shape": shape, "data": values}


def generate_json(server: LocalServer, fields: dict[str, Any]) -> requests.Response:
    url = f"http://{server.config.http_url}/v2/models/{GENERATOR}/generate"
    return requests.post(url, json=fields, timeout=60)


def assert_still_serving(server: LocalServer) -> None:
    with TritonizeClient(server.config.http_url, "http") as client:
        assert client.embed(EMBEDDER, ["still serving"]).shape == (1, 384)
        assert "".join(client.generate(GENERATOR, "Once upon a time", max_tokens=2))


def failures(server: LocalServer, reason: str) -> float:
    return read(server.config.metrics_url).total(FAILURES, GENERATOR, reason=reason)


# -- texts that normalise to nothing ------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["\0", "\u200b", "\ufeff", "\x07\x1b\x7f", "\u0301", " \u200b \ufeff\n"],
    ids=["nul", "zero-width-space", "bom", "controls", "lone-combining-mark", "mixed"],
)  # fmt: skip
def test_text_without_anything_visible_is_refused_as_400(server: LocalServer, text: str) -> None:
    response = infer_json(
        server, EMBEDDER, [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": [text]}]
    )
    assert response.status_code == 400, response.text
    assert "`TEXT`[0] has no visible character" in response.json()["error"]
    assert_still_serving(server)


def test_a_prompt_without_anything_visible_is_refused(server: LocalServer) -> None:
    response = generate_json(server, {"text_input": "\u200b\ufeff\0", "max_tokens": 4})
    assert response.status_code == 400, response.text
    assert "`text_input` has no visible character" in response.json()["error"]


# -- the step models are public doors -----------------------------------------------------------

ENGINE = StepNames(EMBEDDER, 1).engine


@pytest.mark.parametrize(
    ("ids", "mask", "message"),
    [
        ([[101, 7592, 102]], [[0, 0, 0]], "`attention_mask` row 0 is all zeros"),
        ([[101, -1, 102]], [[1, 1, 1]], "`input_ids` holds -1: expected token ids in 0..30521"),
        ([[101, 30522, 102]], [[1, 1, 1]], "`input_ids` holds 30522"),
        ([[101, 7592, 102]], [[1, 1]], "`input_ids` has shape [1, 3] and `attention_mask` [1, 2]"),
        # Beyond the window the build was validated at (and beyond MiniLM's 512 positions):
        # before, ONNX Runtime failed it, and every request batched with it, with a 500.
        ([[101] * 5000], [[1] * 5000], "`input_ids` has 5000 tokens per row: this engine takes"),
    ],
    ids=["all-zero-mask", "minus-one", "past-the-vocabulary", "mismatched-shapes", "too-long"],
)
def test_the_engine_step_checks_its_inputs(
    server: LocalServer, ids: list[list[int]], mask: list[list[int]], message: str
) -> None:
    response = infer_json(
        server, ENGINE, [int64_input("input_ids", ids), int64_input("attention_mask", mask)]
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert_still_serving(server)


def test_a_good_engine_request_beside_a_bad_one_is_answered(server: LocalServer) -> None:
    good = infer_json(server, ENGINE, [int64_input("input_ids", [[101, 7592, 102]]),
                                       int64_input("attention_mask", [[1, 1, 1]])])  # fmt: skip
    assert good.status_code == 200, good.text
    (output,) = good.json()["outputs"]
    assert abs(np.linalg.norm(output["data"]) - 1) < 1e-4


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_the_postprocess_step_refuses_logits_that_are_not_finite(
    server: LocalServer, bad: float
) -> None:
    """Triton checks the shape itself; the values are the step's to check (JSON has no NaN)."""
    client = grpcclient.InferenceServerClient(server.config.grpc_url)
    try:
        logits = grpcclient.InferInput("logits", [1, 3], "FP32")
        logits.set_data_from_numpy(np.array([[0.0, bad, 1.0]], dtype=np.float32))
        with pytest.raises(InferenceServerException) as caught:
            client.infer(StepNames(CLASSIFIER, 1).postprocess, [logits])
    finally:
        client.close()
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "`logits` holds NaN or infinite values" in caught.value.message()


# -- generation requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"temprature": 0.7}, "unknown field(s) `temprature`: allowed are text_input, max_tokens"),
        ({"end_id": -1}, "`end_id` = -1: expected a token id in 0.."),
        ({"pad_id": 1_000_000}, "`pad_id` = 1000000: expected a token id in 0.."),
        ({"stop_words": ["x"] * 17}, "`stop_words` has 17 words: at most 16 allowed"),
        ({"stop_words": ["y" * 129]}, "`stop_words`[0] is 129 characters: at most 128 allowed"),
        ({"max_tokens": 0}, "`max_tokens` = 0: expected 1.."),
    ],
    ids=["misspelt-field", "end-id", "pad-id", "stop-word-count", "stop-word-length", "max-tokens"],
)
def test_bad_generation_requests_are_400_named_and_counted(
    server: LocalServer, fields: dict[str, Any], message: str
) -> None:
    before = failures(server, "invalid_argument")
    triton_before = read(server.config.metrics_url)
    response = generate_json(server, {"text_input": "Hello", "max_tokens": 4, **fields})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert failures(server, "invalid_argument") == before + 1
    # Triton counts a decoupled model's error response as a success (its counters follow a
    # little later): only ours sees it fail.
    successes = triton_before.total(TRITON_SUCCESSES, GENERATOR)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        triton_after = read(server.config.metrics_url)
        if triton_after.total(TRITON_SUCCESSES, GENERATOR) > successes:
            break
        time.sleep(0.2)
    assert triton_after.total(TRITON_SUCCESSES, GENERATOR) > successes
    assert triton_after.total(TRITON_FAILURES, GENERATOR) == triton_before.total(
        TRITON_FAILURES, GENERATOR
    )
    assert_still_serving(server)


def test_a_refused_stream_names_the_field_over_sse_and_grpc(server: LocalServer) -> None:
    """Over SSE the refusal is a 400. A gRPC stream's error carries a message but no status
    code (ModelStreamInferResponse has only `error_message`): Triton's protocol, not ours."""
    url = f"http://{server.config.http_url}/v2/models/{GENERATOR}/generate_stream"
    sse = requests.post(url, json={"text_input": "Hello", "max_tokens": 4, "end_id": -1})
    assert sse.status_code == 400, sse.text
    assert json.loads(sse.text.removeprefix("data:"))["error"].startswith("`end_id` = -1")
    client = grpcclient.InferenceServerClient(server.config.grpc_url)
    errors: list[InferenceServerException] = []
    try:
        client.start_stream(callback=lambda result, error: errors.append(error))
        inputs = [generation_input(grpcclient, "text_input", "Hello"),
                  generation_input(grpcclient, "max_tokens", 4),
                  generation_input(grpcclient, "end_id", -1)]  # fmt: skip
        client.async_stream_infer(GENERATOR, inputs)
    finally:
        client.stop_stream()  # waits for the answer
        client.close()
    (error,) = errors
    assert "`end_id` = -1: expected a token id in 0.." in error.message()
    assert error.status() is None  # if Triton starts sending codes on streams, assert it here


def test_a_huge_max_tokens_over_json_wraps_inside_triton(server: LocalServer) -> None:
    """Triton 2.51 parses /generate's `"max_tokens": 4294967304` (2**32 + 8) into the INT32
    input as 8: the model cannot tell. If this test fails, Triton has stopped wrapping: the
    model's own range check then answers, and the README's note on it can go."""
    wrapped = generate_json(server, {"text_input": "Once upon a time", "max_tokens": 2**32 + 8})
    eight = generate_json(server, {"text_input": "Once upon a time", "max_tokens": 8})
    assert wrapped.status_code == eight.status_code == 200, wrapped.text
    assert wrapped.json()["text_output"] == eight.json()["text_output"]


def test_generate_with_stream_true_is_answered_200_with_an_error_by_triton(
    server: LocalServer,
) -> None:
    """`"stream": true` on /generate (not /generate_stream) makes the generator stream, and
    Triton 2.51's /generate handler, having sent 200, reports that it wanted one response. The
    model cannot tell which endpoint a request came by, so it cannot refuse it first. If this
    test fails, Triton answers it properly now: update the README's note."""
    response = generate_json(server, {"text_input": "Once upon a time", "max_tokens": 4,
                                      "stream": True})  # fmt: skip
    assert response.status_code == 200
    assert "generate expects model to produce exactly 1 response" in response.json()["error"]
