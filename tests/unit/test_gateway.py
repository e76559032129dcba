"""The gateway's request checks, error mapping and response shapes, without a server."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import InferResult, service_pb2

from tritonize.gateway.errors import ApiError
from tritonize.gateway.metrics import route_label
from tritonize.gateway.params import parse_embedding, parse_generation
from tritonize.gateway.shapes import ChunkWriter, chunk, embeddings, event, finish_reason
from tritonize.gateway.triton import (
    EMBEDDINGS,
    GENERATION,
    delta_of,
    generator_error,
    model_info,
    triton_error,
)


def refused(body: Any, chat: bool = False) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_generation(body, chat)
    assert caught.value.status == 400
    return caught.value


def test_a_completion_becomes_the_generators_fields() -> None:
    parsed = parse_generation(
        {"model": "m", "prompt": ["Hi"], "max_tokens": 5, "temperature": 0.5, "top_p": 0.9,
         "seed": 3, "stop": "\n", "n": 2, "stream": True, "stream_options": {"include_usage": True},
         "presence_penalty": 0, "logit_bias": {}, "user": "u"},
        chat=False,
    )  # fmt: skip
    assert parsed.n == 2 and parsed.include_usage and parsed.stream
    assert parsed.fields("Hi", 5) == {
        "text_input": "Hi", "max_tokens": 5, "stream": True, "temperature": 0.5, "top_p": 0.9,
        "seed": 3, "stop_words": ["\n"],
    }  # fmt: skip


def test_chat_takes_max_completion_tokens_and_names_it() -> None:
    parsed = parse_generation(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 7},
        chat=True,
    )
    assert parsed.max_tokens == 7 and parsed.max_tokens_field == "max_completion_tokens"
    assert refused({"model": "m", "messages": []}, chat=True).param == "messages"
    assert refused({"model": "m", "messages": [{}], "prompt": "x"}, chat=True).param == "prompt"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.5), ("temperature", "hot"), ("top_p", 0), ("top_p", 1.5),
        ("max_tokens", 0), ("max_tokens", True), ("seed", -1), ("seed", 2**64), ("n", 0),
        ("stop", [1]), ("stop", ["x"] * 17), ("stream", "yes"), ("presence_penalty", 0.5),
        ("logprobs", 1), ("best_of", 3), ("suffix", "end"), ("temprature", 1),
        ("prompt", [1, 2]), ("prompt", ["a", "b"]), ("model", ""),
    ],
)  # fmt: skip
def test_bad_fields_are_refused_by_name(field: str, value: Any) -> None:
    body = {"model": "m", "prompt": "hi", field: value}
    error = refused(body)
    assert error.param == field
    assert f"`{field}`" in error.message
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_stream_options_need_a_stream() -> None:
    body = {"model": "m", "prompt": "hi", "stream_options": {"include_usage": True}}
    assert refused(body).param == "stream_options"


def test_neutral_values_of_unsupported_fields_pass() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": False,
            "tools": [], "tool_choice": "none", "response_format": {"type": "text"}}  # fmt: skip
    assert parse_generation(body, chat=True).n == 1
    assert refused({**body, "logprobs": True}, chat=True).param == "logprobs"
    assert refused({**body, "response_format": {"type": "json_object"}}, chat=True).param == (
        "response_format"
    )


def test_embedding_requests() -> None:
    parsed = parse_embedding({"model": "e", "input": "one", "encoding_format": "base64"})
    assert parsed.texts == ["one"] and parsed.encoding_format == "base64"
    for body, field in [
        ({"model": "e", "input": []}, "input"),
        ({"model": "e", "input": [[1, 2]]}, "input"),
        ({"model": "e", "input": ["ok", "  "]}, "input"),
        ({"model": "e", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "e", "input": "x", "dimensions": 0}, "dimensions"),
    ]:
        with pytest.raises(ApiError) as caught:
            parse_embedding(body)
        assert caught.value.param == field


def test_base64_is_little_endian_float32() -> None:
    vectors = np.array([[0.5, -1.25, 3.0]], dtype=np.float32)
    encoded = embeddings("e", vectors, "base64")["data"][0]["embedding"]
    assert struct.unpack("<3f", base64.b64decode(encoded)) == (0.5, -1.25, 3.0)
    assert embeddings("e", vectors, "float")["data"][0]["embedding"] == [0.5, -1.25, 3.0]


def test_finish_reason() -> None:
    assert finish_reason(3, 16, max_tokens=16, context_window=64) == "length"
    assert finish_reason(50, 14, max_tokens=20, context_window=64) == "length"  # window full
    assert finish_reason(3, 5, max_tokens=16, context_window=64) == "stop"


def test_generator_refusals_are_400_naming_the_field() -> None:
    error = generator_error("`text_input` is 81 tokens: the context window is 64", "g")
    assert (error.status, error.param) == (400, "prompt")
    assert generator_error("`stop_words` has 20 words", "g").param == "stop"
    assert generator_error("unknown field(s) `x`: allowed are ...", "g").status == 400
    assert generator_error("generation failed: boom", "g").status == 500


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'x' is not found", 404),
        ("StatusCode.INVALID_ARGUMENT", "`TEXT`[0] is empty", 400),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", 503),
        ("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header", 500),
        ("StatusCode.INTERNAL", "stub died", 500),
    ],
)
def test_triton_statuses_map_to_http(status: str, message: str, expected: int) -> None:
    assert triton_error("h:1", status, message, "x").status == expected


def test_model_kinds_from_metadata() -> None:
    generator = model_info(
        "g",
        {"inputs": [{"name": "text_input"}], "outputs": [{"name": "text_output"}]},
        {"parameters": {"context_window": {"string_value": "64"},
                        "max_active": {"string_value": "8"},
                        "chat_template": {"string_value": '{"template": "{{ x }}"}'}}},
    )  # fmt: skip
    assert generator.kind == GENERATION and generator.max_active == 8
    assert generator.chat_template == {"template": "{{ x }}"}
    embedder = model_info(
        "e",
        {"inputs": [{"name": "TEXT"}], "outputs": [{"name": "EMBEDDING", "shape": ["-1", "384"]}]},
        {"max_batch_size": 32},
    )
    assert (embedder.kind, embedder.dimension, embedder.max_batch_size) == (EMBEDDINGS, 384, 32)
    classifier = model_info("c", {"inputs": [{"name": "TEXT"}], "outputs": [{"name": "LABEL"}]}, {})
    assert classifier.kind is None


def test_route_labels_are_bounded() -> None:
    assert route_label("/v1/completions") == "/v1/completions"
    assert route_label("/v1/models/tiny-llama") == "/v1/models/{model}"
    assert route_label("/anything/else") == "other"


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize(
    ("text", "reason", "first"),
    [("Hello", None, True), (' "quoted"\nnew line\t', None, False), ("今天 🚀", "stop", False),
     ("", "length", False), ("\\ back \u2028", None, True)],
)  # fmt: skip
def test_chunk_writer_equals_the_whole_chunk_encoded(
    chat: bool, text: str, reason: str | None, first: bool
) -> None:
    writer = ChunkWriter(chat, "cmpl-1", 'model "x"')
    written = writer.text(3, text, reason, first=first)
    assert written.endswith(b"\n\n") and written.startswith(b"data: {")
    whole = chunk(chat, "cmpl-1", 'model "x"', 3, text, reason, first=first)
    whole["created"] = json.loads(written[6:])["created"]  # the writer's: one per stream
    assert json.loads(written[6:]) == whole
    assert written == event(whole)  # the same bytes, too


def test_a_streams_chunks_share_one_created_time_with_its_usage_chunk() -> None:
    writer = ChunkWriter(True, "chatcmpl-1", "m")
    counts = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    text, last = (
        json.loads(raw[6:]) for raw in (writer.text(0, "hi", "stop"), writer.usage(counts))
    )
    assert last == dict(chunk(True, "chatcmpl-1", "m", None, None, counts=counts),
                        created=text["created"])  # fmt: skip
    assert last["choices"] == [] and last["usage"] == counts


def generation_response(text: str, input_tokens: int, output_tokens: int) -> InferResult:
    """A response as the generator sends it: outputs as raw little-endian bytes."""
    response = service_pb2.ModelInferResponse()
    encoded = text.encode()
    values = [
        ("text_output", "BYTES", struct.pack("<I", len(encoded)) + encoded),
        ("num_input_tokens", "INT32", np.array([[input_tokens]], np.int32).tobytes()),
        ("num_output_tokens", "INT32", np.array([[output_tokens]], np.int32).tobytes()),
    ]
    for name, datatype, raw in values:
        output = response.outputs.add(name=name, datatype=datatype)
        output.shape.extend([1, 1])
        response.raw_output_contents.append(raw)
    return InferResult(response)


@pytest.mark.parametrize("text", ["plain", "", "日本語 🚀", "x" * 300])
def test_a_delta_is_read_from_raw_outputs_as_tritonclient_reads_them(text: str) -> None:
    result = generation_response(text, 7, 300)
    delta = delta_of(result, final=True)
    assert delta.text == result.as_numpy("text_output").reshape(-1)[0].decode() == text
    assert delta.input_tokens == int(result.as_numpy("num_input_tokens").reshape(-1)[0]) == 7
    assert delta.output_tokens == int(result.as_numpy("num_output_tokens").reshape(-1)[0]) == 300
    assert delta.final
