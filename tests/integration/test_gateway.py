"""The OpenAI-compatible gateway, called with the `openai` client, in front of the real
tritonserver: its answers equal what Triton itself gives for the same requests."""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import tokenizers
from prometheus_client.parser import text_string_to_metric_families

from helpers import free_ports
from tritonize.client import TritonizeClient
from tritonize.gateway import GatewayConfig, GatewayThread
from tritonize.monitor.scrape import model_value
from tritonize.server import LocalServer

from .conftest import CLASSIFIER, EMBEDDER, GENERATOR

PROMPTS = ["Once upon a time", "今天天气很好", "Emoji 🚀 and more"]
CONTEXT = 64  # the tiny generator's window (conftest)
MAX_ACTIVE = 8  # its max_batch_size


@pytest.fixture(scope="module")
def gateway(server: LocalServer) -> Iterator[GatewayThread]:
    (port,) = free_ports(1)
    config = GatewayConfig(server.config.grpc_url, triton_api_key=server.config.api_key)
    with GatewayThread(config, port=port) as running:
        yield running


@pytest.fixture(scope="module")
def api(gateway: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def triton(server: LocalServer) -> Iterator[TritonizeClient]:
    with TritonizeClient(server.config.grpc_url, "grpc") as client:
        yield client


@pytest.fixture(scope="module")
def checkpoint(tiny_decoder: Callable[[str], Path]) -> Path:
    return tiny_decoder("llama-decoder")


def greedy(triton: TritonizeClient, prompt: str, max_tokens: int, **fields: Any) -> str:
    return "".join(triton.generate(GENERATOR, prompt, max_tokens=max_tokens, **fields))


def prompt_tokens(checkpoint: Path, prompt: str) -> int:
    tokenizer = tokenizers.Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    return len(tokenizer.encode(prompt).ids)


def test_models_lists_generation_and_embedding_models(api: openai.OpenAI) -> None:
    names = {model.id for model in api.models.list()}
    assert {GENERATOR, EMBEDDER} <= names
    assert CLASSIFIER not in names  # a classifier has no OpenAI route
    assert api.models.retrieve(GENERATOR).id == GENERATOR


@pytest.mark.parametrize("prompt", PROMPTS)
def test_completion_equals_triton_greedy_text(
    api: openai.OpenAI, triton: TritonizeClient, checkpoint: Path, prompt: str
) -> None:
    expected = greedy(triton, prompt, 12)
    answer = api.completions.create(model=GENERATOR, prompt=prompt, max_tokens=12, temperature=0)
    (choice,) = answer.choices
    assert choice.text == expected
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == prompt_tokens(checkpoint, prompt)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert choice.finish_reason == ("length" if answer.usage.completion_tokens == 12 else "stop")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_streamed_completion_equals_triton_greedy_text(
    api: openai.OpenAI, triton: TritonizeClient, checkpoint: Path, prompt: str
) -> None:
    expected = greedy(triton, prompt, 12)
    chunks = list(
        api.completions.create(model=GENERATOR, prompt=prompt, max_tokens=12, stream=True,
                               stream_options={"include_usage": True})
    )  # fmt: skip
    text_chunks, (usage_chunk,) = chunks[:-1], chunks[-1:]
    assert "".join(c.choices[0].text for c in text_chunks) == expected
    assert len(text_chunks) > 1
    reasons = [c.choices[0].finish_reason for c in text_chunks]
    assert reasons[:-1] == [None] * (len(reasons) - 1)
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens == prompt_tokens(checkpoint, prompt)
    assert reasons[-1] == ("length" if usage_chunk.usage.completion_tokens == 12 else "stop")


def test_stop_seed_and_n(api: openai.OpenAI, triton: TritonizeClient) -> None:
    full = greedy(triton, PROMPTS[0], 20)
    stop = full[5:8]
    cut = api.completions.create(model=GENERATOR, prompt=PROMPTS[0], max_tokens=20, stop=stop)
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"

    sampled = {"temperature": 1.0, "top_p": 0.9, "seed": 7}
    expected = greedy(triton, PROMPTS[1], 16, **sampled)
    answer = api.completions.create(model=GENERATOR, prompt=PROMPTS[1], max_tokens=16, **sampled)
    assert answer.choices[0].text == expected

    three = api.completions.create(model=GENERATOR, prompt=PROMPTS[2], max_tokens=10, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.text for c in three.choices} == {greedy(triton, PROMPTS[2], 10)}
    assert three.usage is not None
    single = api.completions.create(model=GENERATOR, prompt=PROMPTS[2], max_tokens=10)
    assert single.usage is not None
    assert three.usage.completion_tokens == 3 * single.usage.completion_tokens

    streamed = api.completions.create(model=GENERATOR, prompt=PROMPTS[2], max_tokens=10, n=2,
                                      stream=True)  # fmt: skip
    texts = ["", ""]
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == [three.choices[0].text] * 2


def test_chat_uses_the_checkpoints_template(
    api: openai.OpenAI, triton: TritonizeClient, checkpoint: Path
) -> None:
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "Hi"}]  # the tiny window holds one short turn
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if tokenizer.chat_template is None:  # a checkpoint without one is refused, naming the model
        with pytest.raises(openai.BadRequestError, match=GENERATOR) as caught:
            api.chat.completions.create(model=GENERATOR, messages=messages)  # type: ignore[arg-type]
        assert caught.value.param == "messages"
        return
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = greedy(triton, prompt, 10)
    answer = api.chat.completions.create(
        model=GENERATOR,
        messages=messages,
        max_completion_tokens=10,  # type: ignore[arg-type]
    )
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].message.role == "assistant"
    streamed = api.chat.completions.create(
        model=GENERATOR, messages=messages, max_tokens=10, stream=True,  # type: ignore[arg-type]
    )  # fmt: skip
    chunks = list(streamed)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected


@pytest.mark.parametrize("texts", ["one sentence", ["first sentence", "zweiter Satz", "三"]])
def test_embeddings_equal_triton(
    api: openai.OpenAI, triton: TritonizeClient, texts: str | list[str]
) -> None:
    expected = triton.embed(EMBEDDER, [texts] if isinstance(texts, str) else texts)
    floats = api.embeddings.create(model=EMBEDDER, input=texts)
    got = np.array([item.embedding for item in floats.data], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)
    encoded = api.embeddings.create(model=EMBEDDER, input=texts, encoding_format="base64",
                                    dimensions=expected.shape[1])  # fmt: skip
    rows = [np.frombuffer(base64.b64decode(item.embedding), "<f4") for item in encoded.data]  # type: ignore[arg-type]
    np.testing.assert_array_equal(np.stack(rows), expected)


def test_a_long_input_list_is_sent_in_batches(api: openai.OpenAI, triton: TritonizeClient) -> None:
    texts = [f"sentence number {i}" for i in range(70)]  # over max_batch_size (32)
    answer = api.embeddings.create(model=EMBEDDER, input=texts)
    got = np.array([item.embedding for item in answer.data], dtype=np.float32)
    expected = np.concatenate([triton.embed(EMBEDDER, texts[i : i + 32]) for i in (0, 32, 64)])
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "status", "param", "message"),
    [
        (lambda a: a.completions.create(model="nope", prompt="hi"), 404, "model", "`nope`"),
        (lambda a: a.embeddings.create(model="nope", input="hi"), 404, "model", "`nope`"),
        (lambda a: a.embeddings.create(model=GENERATOR, input="hi"), 400, "model",
         "generation model"),
        (lambda a: a.completions.create(model=EMBEDDER, prompt="hi"), 400, "model",
         "embedding model"),
        (lambda a: a.completions.create(model=GENERATOR, prompt="hi", temperature=3), 400,
         "temperature", "0..2"),
        (lambda a: a.completions.create(model=GENERATOR, prompt="hi", top_p=0), 400, "top_p",
         "(0, 1]"),
        (lambda a: a.completions.create(model=GENERATOR, prompt="hi", max_tokens=500), 400,
         "max_tokens", "1..63"),
        (lambda a: a.chat.completions.create(model=GENERATOR, messages=[{"role": "user",
         "content": "hi"}], max_completion_tokens=500), 400, "max_completion_tokens", "1..63"),
        (lambda a: a.completions.create(model=GENERATOR, prompt="word " * 80), 400, "prompt",
         "context window is 64"),
        (lambda a: a.completions.create(model=GENERATOR, prompt="word " * 80, stream=True),
         400, "prompt", "context window is 64"),
        (lambda a: a.completions.create(model=GENERATOR, prompt="hi", logprobs=2), 400,
         "logprobs", "not supported"),
        (lambda a: a.completions.create(model=GENERATOR, prompt="hi",
         extra_body={"temprature": 1}), 400, "temprature", "unknown field"),
        (lambda a: a.completions.create(model=GENERATOR, prompt="hi", n=MAX_ACTIVE + 1), 400,
         "n", "at most 8"),
        (lambda a: a.completions.create(model=GENERATOR, prompt=["a", "b"]), 400, "prompt",
         "one per request"),
        (lambda a: a.embeddings.create(model=EMBEDDER, input="hi", dimensions=100), 400,
         "dimensions", "384"),
        (lambda a: a.embeddings.create(model=EMBEDDER, input=["hi", " "]), 400, "input",
         "empty"),
    ],
)  # fmt: skip
def test_errors_have_openais_shape_and_status(
    api: openai.OpenAI, call: Callable[[openai.OpenAI], Any], status: int, param: str,
    message: str,
) -> None:  # fmt: skip
    with pytest.raises(openai.APIStatusError) as caught:
        result = call(api)
        list(result) if isinstance(result, openai.Stream) else None
    error = caught.value
    assert error.status_code == status
    assert isinstance(error.body, dict)
    assert set(error.body) >= {"message", "type", "param", "code"}
    assert error.body["param"] == param
    assert message in error.body["message"]


def test_triton_down_is_503(api: openai.OpenAI) -> None:
    dead, gateway_port = free_ports(2)
    with GatewayThread(GatewayConfig(f"127.0.0.1:{dead}"), port=gateway_port) as gateway:
        down = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
        for call in (
            lambda: down.completions.create(model=GENERATOR, prompt="hi"),
            lambda: down.embeddings.create(model=EMBEDDER, input="hi"),
        ):
            with pytest.raises(openai.InternalServerError) as caught:
                call()
            assert caught.value.status_code == 503
            assert f"127.0.0.1:{dead}" in caught.value.message


def test_the_command_needs_the_key_when_one_is_set(server: LocalServer) -> None:
    (port,) = free_ports(1)
    env = {**os.environ, "TRITONIZE_OPENAI_API_KEY": "s3cret", "TRITONIZE_API_KEY": ""}
    command = [sys.executable, "-m", "tritonize.cli", "gateway", "--triton",
               server.config.grpc_url, "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert "OpenAI API on http://127.0.0.1:" in process.stdout.readline()
        base = f"http://127.0.0.1:{port}/v1"
        wrong = openai.OpenAI(base_url=base, api_key="guess", max_retries=0)
        deadline = time.monotonic() + 20
        while True:
            try:
                wrong.embeddings.create(model=EMBEDDER, input="hi")
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, "the gateway never answered"
                time.sleep(0.1)
                continue
            except openai.AuthenticationError as caught:
                assert caught.status_code == 401
                break
            raise AssertionError("a wrong key was let in")
        right = openai.OpenAI(base_url=base, api_key="s3cret", max_retries=0)
        assert len(right.embeddings.create(model=EMBEDDER, input="hi").data) == 1
        with pytest.raises(openai.InternalServerError, match="admin key"):
            right.models.list()  # no Triton key given: listing cannot work, and says why
    finally:
        process.terminate()
        process.wait(timeout=15)


def gateway_metric(gateway: GatewayThread, name: str, **labels: str) -> float:
    connection = http.client.HTTPConnection(gateway.url.removeprefix("http://"), timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def leave_after_first_chunk(gateway: GatewayThread, body: dict[str, Any]) -> None:
    """Stream a completion, read its first chunk, and close the connection."""
    connection = http.client.HTTPConnection(gateway.url.removeprefix("http://"), timeout=10)
    connection.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                       {"Content-Type": "application/json"})  # fmt: skip
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: {")
    connection.sock.close()  # type: ignore[union-attr]
    connection.close()


def test_a_client_leaving_mid_stream_cancels_the_generation(
    gateway: GatewayThread, server: LocalServer, api: openai.OpenAI
) -> None:
    """The tiny model writes its ~60 tokens in about 0.1 s, so one early exit can lose the race
    to the end; a gateway that never cancels loses it every time (all tokens generated)."""
    body = {"model": GENERATOR, "prompt": "Hi", "max_tokens": CONTEXT - 2}
    full = api.completions.create(**body)
    assert full.usage is not None and full.usage.completion_tokens >= 40  # worth cancelling
    url = server.config.metrics_url
    generated = []
    for _ in range(5):
        before = model_value(url, "tritonize_generated_tokens_total", GENERATOR)
        leave_after_first_chunk(gateway, body)
        time.sleep(0.5)
        assert model_value(url, "tritonize_active_sequences", GENERATOR) == 0
        generated.append(model_value(url, "tritonize_generated_tokens_total", GENERATOR) - before)
        if generated[-1] < full.usage.completion_tokens // 2:
            break
    assert min(generated) < full.usage.completion_tokens // 2, generated
    assert gateway_metric(gateway, "tritonize_gateway_open_streams") == 0


def test_metrics_count_requests_by_route_and_status(
    gateway: GatewayThread, api: openai.OpenAI
) -> None:
    def count(route: str, status: str) -> float:
        return gateway_metric(gateway, "tritonize_gateway_requests_total", route=route,
                              status=status)  # fmt: skip

    ok, missing = count("/v1/embeddings", "200"), count("/v1/completions", "404")
    for _ in range(3):
        api.embeddings.create(model=EMBEDDER, input="hi")
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="nope", prompt="hi")
    assert count("/v1/embeddings", "200") == ok + 3
    assert count("/v1/completions", "404") == missing + 1


def test_serve_runs_the_gateway_beside_triton_and_stops_it(repository: Path) -> None:
    http_port, grpc_port, metrics_port, openai_port = free_ports(4)
    log = repository.parent / "openai.log"
    command = [sys.executable, "-m", "tritonize.cli", "serve", str(repository),
               "--http-port", str(http_port), "--grpc-port", str(grpc_port),
               "--metrics-port", str(metrics_port), "--openai-port", str(openai_port),
               "--openai-api-key", "k3y", "--log-file", str(log)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRITONIZE_")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        lines: list[str] = []
        while not any("Ctrl-C stops it" in line for line in lines):
            line = process.stdout.readline()
            assert line, f"serve ended: {''.join(lines)}"
            lines.append(line)
        assert f"OpenAI API http://127.0.0.1:{openai_port}/v1" in "".join(lines)
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{openai_port}/v1", api_key="k3y",
                            max_retries=0)  # fmt: skip
        assert {GENERATOR, EMBEDDER} <= {m.id for m in api.models.list()}  # serve's admin key
        assert api.completions.create(model=GENERATOR, prompt="Hi", max_tokens=3).choices
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0
    with pytest.raises(openai.APIConnectionError):
        api.models.list()
