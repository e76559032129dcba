"""Locust users that call a Triton model through `TritonizeClient` and check every response.

Each call is reported as one Locust request event, timed with `perf_counter`; a response that
fails its checks (shape, finite values, normalisation, empty text) is reported as a failure.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import grpc.experimental.gevent
from locust import User, constant, task

from tritonize.client import TritonizeClient
from tritonize.loadtest.checks import response_problem
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


class _ModelUser(User):
    """A user with its own client to `--triton-model` and texts from `--texts-file`."""

    abstract = True
    protocol = "http"  # of the client
    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.model: str = options.triton_model
        self.texts = load_texts(options.texts_file)
        self.client = TritonizeClient(_address(self.host), self.protocol)

    def on_stop(self) -> None:
        self.client.close()  # an open gRPC channel makes Locust hang at shutdown

    def _fire(
        self, kind: str, seconds: float, size: int = 0, error: Exception | None = None
    ) -> None:
        """One Locust request event of type `kind`, named after the model."""
        self.environment.events.request.fire(
            request_type=kind,
            name=self.model,
            response_time=seconds * 1000,
            response_length=size,
            exception=error,
            context={},
        )


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
        try:
            outputs = self.client.infer_inputs(self.model, inputs)
            size = sum(v.nbytes for v in outputs.values())
            rows = len(next(iter(inputs.values())))
            problem = response_problem(outputs, rows, self.metadata)
            if problem:
                error = ResponseCheckError(problem)
        except Exception as exc:  # whatever went wrong, a failed request: never an uncounted one
            error = exc
        self._fire(self.protocol.upper(), time.perf_counter() - start, size, error)


class TritonHttpUser(TritonUser):
    protocol = "http"


class TritonGrpcUser(TritonUser):
    protocol = "grpc"


class TritonStreamUser(_ModelUser):
    """Streams from a generation model over HTTP /generate_stream (server-sent events).

    Three request events per call: `TTFT` (time to the first text), `ITL` (each gap between
    text deltas) and `E2E` (the whole response, the one that counts as the request).
    """

    def on_start(self) -> None:
        super().on_start()
        self.max_tokens: int = self.environment.parsed_options.max_tokens

    @task
    def generate(self) -> None:
        start = last = time.perf_counter()
        first: float | None = None
        text = ""
        error: Exception | None = None
        try:
            for delta in self.client.generate(
                self.model, random.choice(self.texts), self.max_tokens, stream=True
            ):
                now = time.perf_counter()
                if delta and first is None:
                    first = now
                    self._fire("TTFT", now - start)
                elif delta:
                    self._fire("ITL", now - last)
                last = now
                text += delta
            if not text:
                error = ResponseCheckError("the stream carried no text")
        except Exception as exc:  # whatever went wrong, a failed request: never an uncounted one
            error = exc
        self._fire("E2E", time.perf_counter() - start, len(text.encode()), error)


def _address(host: str | None) -> str:
    """Locust's --host, with or without a scheme, as tritonclient's HOST:PORT."""
    if not host:
        raise ValueError("set the Triton address with --host HOST:PORT")
    return host.split("://", 1)[-1].rstrip("/")
