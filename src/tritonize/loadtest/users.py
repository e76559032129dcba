"""Locust users that call a Triton model through `TritonizeClient`, or a generation model
through the OpenAI-compatible gateway, and check every response.

Each call is reported as one Locust request event, timed with `perf_counter`; a response that
fails its checks (shape, finite values, normalisation, empty text) is reported as a failure.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc.experimental.gevent
import requests
from locust import User, constant, task

from tritonize.client import TritonizeClient
from tritonize.loadtest.checks import response_problem
from tritonize.loadtest.versions import stream_problem, stream_version
from tritonize.tasks import served_task
from tritonize.triton_models.common import TEXT

# Without this, gRPC's C core blocks the gevent loop: calls are serialised and latencies are
# under-reported. It must run after Locust (which monkey-patches) is imported.
grpc.experimental.gevent.init_gevent()

DEFAULT_TEXTS = Path(__file__).with_name("texts.txt")


class ResponseCheckError(Exception):
    """A response arrived but is wrong."""


def load_texts(path: str | None) -> list[str]:
    lines = Path(path or DEFAULT_TEXTS).read_text(encoding="utf-8").splitlines()
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise ValueError(f"no texts in {path or DEFAULT_TEXTS}")
    return texts


class _EventUser(User):
    """A user calling `--triton-model` with texts from `--texts-file`, reporting its own
    request events."""

    abstract = True
    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.model: str = options.triton_model
        self.texts = load_texts(options.texts_file)

    def _fire(
        self,
        kind: str,
        seconds: float,
        size: int = 0,
        error: Exception | None = None,
        version: str = "",
    ) -> None:
        """One Locust request event of type `kind`, named after the model; its context holds
        the version of the model that answered, when known."""
        self.environment.events.request.fire(
            request_type=kind,
            name=self.model,
            response_time=seconds * 1000,
            response_length=size,
            exception=error,
            context={"model_version": version} if version and error is None else {},
        )


class _ModelUser(_EventUser):
    """A user with its own `TritonizeClient`."""

    abstract = True
    protocol = "http"  # of the client

    def on_start(self) -> None:
        super().on_start()
        self.client = TritonizeClient(_address(self.host), self.protocol)

    def on_stop(self) -> None:
        self.client.close()  # an open gRPC channel makes Locust hang at shutdown


class TritonUser(_ModelUser):
    """Sends `--texts-per-request` random texts per request, back to back, as the model's task
    asks for them (rerank: the first text is the query; question answering: the first text
    asks about them all, one request)."""

    abstract = True

    def on_start(self) -> None:
        super().on_start()
        self.per_request: int = self.environment.parsed_options.texts_per_request
        self.metadata: dict[str, Any] = self.client.metadata(self.model)
        self.task = served_task(self.metadata)

    def _request(self, texts: list[str]) -> dict[str, list[str]]:
        return self.task.request(texts) if self.task else {TEXT: texts}

    @task
    def infer(self) -> None:
        texts = random.sample(self.texts, min(self.per_request, len(self.texts)))
        inputs = self._request(texts)
        start = time.perf_counter()
        error: Exception | None = None
        size = 0
        self.client.last_model_version = ""
        try:
            outputs = self.client.infer_inputs(self.model, inputs)
            size = sum(v.nbytes for v in outputs.values())
            rows = len(next(iter(inputs.values())))
            problem = response_problem(outputs, rows, self.metadata)
            if problem:
                error = ResponseCheckError(problem)
        except Exception as exc:  # whatever went wrong, a failed request: never an uncounted one
            error = exc
        seconds = time.perf_counter() - start
        self._fire(self.protocol.upper(), seconds, size, error, self.client.last_model_version)


class TritonHttpUser(TritonUser):
    protocol = "http"


class TritonGrpcUser(TritonUser):
    protocol = "grpc"


class TritonStreamUser(_ModelUser):
    """Streams from a generation model over HTTP /generate_stream (server-sent events).

    Three request events per call: `TTFT` (time to the first text), `ITL` (each gap between
    text deltas) and `E2E` (the whole response, the one that counts as the request, under the
    model version that made it). A stream whose responses name two versions is a failure.
    """

    def on_start(self) -> None:
        super().on_start()
        self.max_tokens: int = self.environment.parsed_options.max_tokens

    @task
    def generate(self) -> None:
        start = last = time.perf_counter()
        first: float | None = None
        text = ""
        versions: list[str] = []
        error: Exception | None = None
        try:
            for delta, version in self.client.generate_versioned(
                self.model, random.choice(self.texts), self.max_tokens, stream=True
            ):
                versions.append(version)
                now = time.perf_counter()
                if delta and first is None:
                    first = now
                    self._fire("TTFT", now - start)
                elif delta:
                    self._fire("ITL", now - last)
                last = now
                text += delta
            problem = stream_problem(versions) or (None if text else "the stream carried no text")
            if problem:
                error = ResponseCheckError(problem)
        except Exception as exc:  # whatever went wrong, a failed request: never an uncounted one
            error = exc
        seconds = time.perf_counter() - start
        self._fire("E2E", seconds, len(text.encode()), error, stream_version(versions))


class _OpenAIStreamUser(_EventUser):
    """Streams from a generation model through the OpenAI-compatible gateway (`--host` is its
    URL), with `stream_options.include_usage`, sending TRITONIZE_OPENAI_API_KEY if set.

    The events of `TritonStreamUser`: `TTFT`, `ITL` and `E2E`, whose response length is the
    completion's token count as the usage chunk gives it. A stream with no text, no usage, no
    finish reason or an error event is a failure."""

    abstract = True
    route = "/v1/completions"

    def on_start(self) -> None:
        super().on_start()
        self.max_tokens: int = self.environment.parsed_options.max_tokens
        self.url = f"{_base_url(self.host)}{self.route}"
        self.session = requests.Session()
        key = os.environ.get("TRITONIZE_OPENAI_API_KEY")
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def on_stop(self) -> None:
        self.session.close()

    def _body(self, text: str) -> dict[str, Any]:
        return {"prompt": text}

    def _text(self, choice: dict[str, Any]) -> str:
        return str(choice.get("text") or "")

    @task
    def generate(self) -> None:
        body = {
            "model": self.model, **self._body(random.choice(self.texts)),
            "max_tokens": self.max_tokens, "stream": True,
            "stream_options": {"include_usage": True},
        }  # fmt: skip
        start = last = time.perf_counter()
        first: float | None = None
        text, usage, reason = "", None, None
        error: Exception | None = None
        try:
            with self.session.post(self.url, json=body, stream=True, timeout=300) as response:
                _raise_for_status(response)
                for chunk in _events(response):
                    if "error" in chunk:
                        raise ResponseCheckError(f"error event: {chunk['error'].get('message')}")
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices", []):
                        delta = self._text(choice)
                        reason = choice.get("finish_reason") or reason
                        now = time.perf_counter()
                        if delta and first is None:
                            first = now
                            self._fire("TTFT", now - start)
                        elif delta:
                            self._fire("ITL", now - last)
                        if delta:
                            last = now
                        text += delta
            error = _stream_problem(text, usage, reason)
        except Exception as exc:  # whatever went wrong, a failed request: never an uncounted one
            error = exc
        tokens = int(usage.get("completion_tokens", 0)) if usage else 0
        self._fire("E2E", time.perf_counter() - start, tokens, error)


class OpenAICompletionStreamUser(_OpenAIStreamUser):
    """Streams /v1/completions from the gateway."""

    route = "/v1/completions"


class OpenAIChatStreamUser(_OpenAIStreamUser):
    """Streams /v1/chat/completions from the gateway, each text one user message."""

    route = "/v1/chat/completions"

    def _body(self, text: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": text}]}

    def _text(self, choice: dict[str, Any]) -> str:
        return str((choice.get("delta") or {}).get("content") or "")


def _raise_for_status(response: requests.Response) -> None:
    """A refusal as the gateway words it (OpenAI's error object), not just its status."""
    if response.status_code == 200:
        return
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    raise ResponseCheckError(f"HTTP {response.status_code}: {message}")


def _events(response: requests.Response) -> Iterator[dict[str, Any]]:
    """The JSON of each server-sent event up to `data: [DONE]` (a stream without it failed)."""
    pending = b""
    for received in response.iter_content(chunk_size=None):  # as it arrives, unbuffered
        pending += received
        *events, pending = pending.split(b"\n\n")
        for event in events:
            if not event.startswith(b"data: "):
                continue
            data = event[len(b"data: ") :]
            if data == b"[DONE]":
                return
            yield json.loads(data)
    raise ResponseCheckError("the stream ended without `data: [DONE]`")


def _stream_problem(
    text: str, usage: dict[str, Any] | None, reason: str | None
) -> ResponseCheckError | None:
    if not text:
        return ResponseCheckError("the stream carried no text")
    if reason is None:
        return ResponseCheckError("no choice carried a finish_reason")
    if not usage or int(usage.get("completion_tokens", 0)) < 1:
        return ResponseCheckError(f"no usage chunk with completion_tokens >= 1: {usage}")
    return None


def _base_url(host: str | None) -> str:
    """Locust's --host as the gateway's base URL (http:// when no scheme is given)."""
    if not host:
        raise ValueError("set the gateway's URL with --host http://HOST:PORT")
    host = host.rstrip("/").removesuffix("/v1")
    return host if "://" in host else f"http://{host}"


def _address(host: str | None) -> str:
    """Locust's --host, with or without a scheme, as tritonclient's HOST:PORT."""
    if not host:
        raise ValueError("set the Triton address with --host HOST:PORT")
    return host.split("://", 1)[-1].rstrip("/")
