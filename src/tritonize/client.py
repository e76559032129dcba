"""High-level calls over tritonclient HTTP and gRPC (binary tensors), one API for both.

>>> with TritonizeClient("127.0.0.1:8000") as client:
...     vectors = client.embed("minilm", ["first sentence", "second sentence"])
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from enum import StrEnum
from http.client import HTTPException
from types import TracebackType
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException

from tritonize.api_key import API_KEY_HEADER
from tritonize.errors import InferenceError
from tritonize.tasks.base import batched as takes_batches
from tritonize.triton_models.common import (
    ANSWER,
    CONTEXT,
    EMBEDDING,
    END,
    ENTITIES,
    LABEL,
    MODEL_VERSION,
    PROBABILITIES,
    QUERY,
    QUESTION,
    SCORE,
    START,
    TEXT,
    TRUNCATED,
)
from tritonize.triton_models.generation import REQUEST_SCHEMA


class Protocol(StrEnum):
    HTTP = "http"
    GRPC = "grpc"


DEFAULT_URLS = {Protocol.HTTP: "127.0.0.1:8000", Protocol.GRPC: "127.0.0.1:8001"}


@dataclass(frozen=True)
class Answer:
    text: str
    score: float
    start: int  # character offsets into the context: text == context[start:end]
    end: int


@dataclass(frozen=True)
class Classification:
    label: str
    score: float
    probabilities: np.ndarray
    truncated: bool


class TritonizeClient:
    """A Triton client for tritonize ensembles; errors become `InferenceError`."""

    def __init__(
        self,
        url: str | None = None,
        protocol: Protocol | str = Protocol.HTTP,
        timeout_s: float = 60.0,
        api_key: str | None = None,
    ) -> None:
        self.protocol = Protocol(protocol)
        self.url = host_port(url or DEFAULT_URLS[self.protocol])
        self.api_key = api_key
        if self.protocol is Protocol.HTTP:
            import tritonclient.http as module

            kwargs: dict[str, Any] = {"network_timeout": timeout_s, "connection_timeout": timeout_s}
        else:
            import tritonclient.grpc as module  # type: ignore[no-redef]

            kwargs = {}
        self._module: Any = module
        self._timeout_s = timeout_s
        self._client: Any = module.InferenceServerClient(self.url, **kwargs)
        self._metadata: dict[str, dict[str, Any]] = {}
        # The version of the model that made the last `infer_inputs` response (Triton's
        # `model_version`): which build answered, while a rollout moves a model.
        self.last_model_version = ""

    # -- inference ---------------------------------------------------------------------------
    def infer(self, model: str, texts: Sequence[str | bytes]) -> dict[str, np.ndarray]:
        """Send `texts` as TEXT [B, 1]; return every output of `model` by name."""
        return self.infer_inputs(model, {TEXT: texts})

    def infer_inputs(
        self, model: str, inputs: Mapping[str, Sequence[str | bytes]]
    ) -> dict[str, np.ndarray]:
        """Send each named input's texts (BYTES [B, 1]; [1] to a model that takes one input per
        request, such as question answering); return every output of `model` by name."""
        batched = takes_batches(self._metadata_of(model))
        requests = []
        for name, texts in inputs.items():
            if not texts:
                raise InferenceError(f"`{name}` is empty: expected at least one text")
            if not batched and len(texts) != 1:
                raise InferenceError(
                    f"`{name}` holds {len(texts)} texts: model `{model}` takes one per request"
                )
            data = np.array([t.encode() if isinstance(t, str) else t for t in texts], dtype=object)
            data = data.reshape(-1, 1) if batched else data
            request = self._module.InferInput(name, list(data.shape), "BYTES")
            request.set_data_from_numpy(data)
            requests.append(request)
        # Every output, unnamed: during a canary that includes the router's MODEL_VERSION.
        result = self._call(model, "infer", model, requests, **self._infer_timeout())
        self.last_model_version = _response_version(result)
        return {name: result.as_numpy(name) for name in self.output_names(model)}

    def embed(self, model: str, texts: Sequence[str | bytes]) -> np.ndarray:
        """L2-normalised embeddings, FP32 [B, hidden]."""
        return self.infer(model, texts)[EMBEDDING]

    def classify(self, model: str, texts: Sequence[str | bytes]) -> list[Classification]:
        out = self.infer(model, texts)
        return [
            Classification(
                label=out[LABEL][i, 0].decode(),
                score=float(out[SCORE][i, 0]),
                probabilities=out[PROBABILITIES][i],
                truncated=bool(out[TRUNCATED][i, 0]),
            )
            for i in range(len(texts))
        ]

    def rerank(self, model: str, query: str, texts: Sequence[str]) -> np.ndarray:
        """The relevance of each text to `query` (a cross-encoder's SCORE), FP32 [B]."""
        out = self.infer_inputs(model, {QUERY: [query] * len(texts), TEXT: texts})
        return out[SCORE][:, 0]

    def answer(self, model: str, question: str, context: str) -> Answer:
        """The span of `context` that answers `question` (extractive question answering)."""
        out = self.infer_inputs(model, {QUESTION: [question], CONTEXT: [context]})
        return Answer(
            text=out[ANSWER][0].decode(),
            score=float(out[SCORE][0]),
            start=int(out[START][0]),
            end=int(out[END][0]),
        )

    def entities(self, model: str, texts: Sequence[str]) -> list[list[dict[str, Any]]]:
        """Each text's named entities: text, label, score, start and end (characters)."""
        out = self.infer_inputs(model, {TEXT: texts})
        return [json.loads(item) for item in out[ENTITIES][:, 0]]

    def generate(
        self, model: str, prompt: str, max_tokens: int = 64, stream: bool = False,
        **parameters: Any,
    ) -> Iterator[str]:  # fmt: skip
        """Text from a generation model: the deltas as they come (`stream`), or one whole text.

        `parameters` are TensorRT-LLM's request fields: temperature, top_k, top_p, seed,
        stop_words, end_id, exclude_input_in_output.
        """
        # Closed with this generator: a caller that stops early ends the stream at once.
        with closing(
            self.generate_versioned(model, prompt, max_tokens, stream, **parameters)
        ) as versioned:
            for text, _version in versioned:
                yield text

    def generate_versioned(
        self, model: str, prompt: str, max_tokens: int = 64, stream: bool = False,
        **parameters: Any,
    ) -> Generator[tuple[str, str], None, None]:  # fmt: skip
        """`generate`, each text with the version of the model that made it (Triton's
        `model_version`): a stream's texts should all name one."""
        fields = {"text_input": prompt, "max_tokens": max_tokens, "stream": stream, **parameters}
        if self.protocol is Protocol.HTTP:
            yield from self._generate_http(model, fields)
        else:
            yield from self._generate_grpc(model, fields)

    def _generate_http(self, model: str, fields: dict[str, Any]) -> Iterator[tuple[str, str]]:
        """Triton's generate extension: /generate, or /generate_stream (server-sent events)."""
        import json
        import urllib.error
        import urllib.request

        endpoint = "generate_stream" if fields["stream"] else "generate"
        request = urllib.request.Request(
            f"http://{self.url}/v2/models/{model}/{endpoint}",
            data=json.dumps(fields).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                for line in response:
                    if fields["stream"] and not line.startswith(b"data:"):
                        continue
                    event = json.loads(line.removeprefix(b"data:"))
                    if "error" in event:  # a stream can fail after it started
                        raise InferenceError(f"model `{model}` at {self.url}: {event['error']}")
                    version = event.get(MODEL_VERSION, event.get("model_version", ""))
                    yield event["text_output"], str(np.asarray(version).reshape(-1)[0])
        except urllib.error.HTTPError as exc:
            detail = _http_error_detail(exc.code, str(exc.reason), exc.read())
            raise InferenceError(f"model `{model}` at {self.url}: {detail}") from None
        except OSError as exc:
            raise InferenceError(f"cannot reach Triton at {self.url} (http): {exc}") from exc
        except HTTPException as exc:
            raise InferenceError(_not_http(self.url, exc)) from exc

    def _generate_grpc(self, model: str, fields: dict[str, Any]) -> Iterator[tuple[str, str]]:
        """A gRPC stream; the final (possibly empty) response closes it."""
        import queue

        results: queue.Queue[Any] = queue.Queue()
        inputs = [generation_input(self._module, name, value) for name, value in fields.items()]
        self._call(
            model, "start_stream", callback=lambda result, error: results.put((result, error))
        )
        finished = False
        try:
            try:
                self._call(model, "async_stream_infer", model, inputs,
                           enable_empty_final_response=True)  # fmt: skip
            except InferenceError:
                if results.empty():
                    raise
                # The stream broke before the request went out: its callback holds the reason.
            while not finished:
                result, error = self._next_response(results, model)
                if error is not None:
                    raise InferenceError(f"model `{model}` at {self.url}: {error.message()}")
                response = result.get_response()
                if response.outputs:
                    text = result.as_numpy("text_output").reshape(-1)[0].decode()
                    yield text, _response_version(result)
                finished = response.parameters["triton_final_response"].bool_param
        finally:
            # A plain stop waits for every pending response: forever when the server never ends
            # the stream (its stub died), for the whole generation when the caller stopped early.
            self._client.stop_stream(cancel_requests=not finished)

    def _next_response(self, results: Any, model: str) -> tuple[Any, Any]:
        import queue

        try:
            return tuple(results.get(timeout=self._timeout_s))  # type: ignore[return-value]
        except queue.Empty:
            raise InferenceError(
                f"model `{model}` at {self.url}: no response within {self._timeout_s:g} s"
            ) from None

    # -- server and models -------------------------------------------------------------------
    def is_server_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except Exception:  # unreachable counts as not ready
            return False

    def is_model_ready(self, model: str) -> bool:
        try:
            return bool(self._client.is_model_ready(model))
        except Exception:  # unreachable counts as not ready
            return False

    def metadata(self, model: str) -> dict[str, Any]:
        """Model metadata (name, versions, inputs, outputs) as a dict."""
        extra = {"as_json": True} if self.protocol is Protocol.GRPC else {}
        return dict(self._call(model, "get_model_metadata", model, **extra))

    def config(self, model: str) -> dict[str, Any]:
        extra = {"as_json": True} if self.protocol is Protocol.GRPC else {}
        config = self._call(model, "get_model_config", model, **extra)
        return dict(config.get("config", config))

    def is_generation_model(self, model: str) -> bool:
        """Whether `model` takes a prompt (`text_input`) rather than texts (TEXT)."""
        inputs = {tensor["name"] for tensor in self.metadata(model)["inputs"]}
        return "text_input" in inputs and TEXT not in inputs

    def output_names(self, model: str) -> list[str]:
        return [o["name"] for o in self._metadata_of(model)["outputs"]]

    def _metadata_of(self, model: str) -> dict[str, Any]:
        """`model`'s metadata, asked once per client."""
        if model not in self._metadata:
            self._metadata[model] = self.metadata(model)
        return self._metadata[model]

    def load_model(self, model: str) -> None:
        """Model-repository API: needs the server's API key."""
        self._call(model, "load_model", model, headers=self._key_headers())

    def unload_model(self, model: str) -> None:
        self._call(model, "unload_model", model, headers=self._key_headers())

    def close(self) -> None:
        """Close the connection; calls after this fail. Closing twice is harmless."""
        if self._client is not None:
            self._client.close()
            # Drop it now: tritonclient's gRPC client closes its channel again in __del__, and
            # at interpreter exit under gevent that second close hangs the process.
            self._client = None

    def __enter__(self) -> TritonizeClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers -----------------------------------------------------------------------------
    def _infer_timeout(self) -> dict[str, Any]:
        if self.protocol is Protocol.GRPC:
            return {"client_timeout": self._timeout_s}
        return {}

    def _key_headers(self) -> dict[str, str] | None:
        if self.api_key is None:
            return None
        if self.protocol is Protocol.GRPC:
            return {f"triton-grpc-protocol-{API_KEY_HEADER}": self.api_key}
        return {API_KEY_HEADER: self.api_key}

    def _call(self, model: str, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._client is None:
            raise InferenceError(f"the client of {self.url} is closed")
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except InferenceServerException as exc:
            raise InferenceError(f"model `{model}` at {self.url}: {exc.message()}") from exc
        except (ConnectionError, OSError) as exc:
            raise InferenceError(
                f"cannot reach Triton at {self.url} ({self.protocol.value}): {exc}"
            ) from exc
        except HTTPException as exc:  # an answer that is not HTTP/1.1: the gRPC port's
            raise InferenceError(_not_http(self.url, exc)) from exc
        except ValueError as exc:  # HTTP, but not Triton's JSON: another server, the metrics port
            raise InferenceError(
                f"{self.url} answered, but not Triton's HTTP API ({type(exc).__name__}): is it "
                "the metrics port? --url takes Triton's HTTP (or, with --protocol grpc, gRPC) port"
            ) from exc


def _response_version(result: Any) -> str:
    """The build that made an inference result: its MODEL_VERSION output during a canary (the
    router's `model_version` is the serving build's), else the response's `model_version`."""
    routed = result.as_numpy(MODEL_VERSION)
    if routed is not None and routed.size:
        return str(int(routed.reshape(-1)[0]))
    response = result.get_response()
    if isinstance(response, dict):
        return str(response.get("model_version", ""))
    return str(getattr(response, "model_version", ""))


def host_port(url: str) -> str:
    """`url` as tritonclient wants it, HOST:PORT (a scheme and a trailing slash are dropped)."""
    address = url.split("://", 1)[-1].rstrip("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in address:
        raise InferenceError(
            f"url {url!r} is not HOST:PORT, PORT in 1..65535 (e.g. 127.0.0.1:8000)"
        )
    return address


def _http_error_detail(status: int, reason: str, body: bytes) -> str:
    """The `error` of an error answer: JSON, or one server-sent event (/generate_stream)."""
    import json

    text = body.decode(errors="replace").strip()
    try:
        error = json.loads(text.removeprefix("data:")).get("error")
    except (ValueError, AttributeError):
        error = None
    return str(error) if error else f"HTTP {status} {reason}" + (f": {text[:200]}" if text else "")


def _not_http(url: str, error: Exception) -> str:
    return (
        f"{url} did not answer in HTTP ({type(error).__name__}): is it Triton's gRPC "
        "port? Then use --protocol grpc, or --url with its HTTP port"
    )


_GENERATION_FIELDS = {field.name: field for field in REQUEST_SCHEMA}


def generation_input(module: Any, name: str, value: Any) -> Any:
    """A [1, n] tensor for one generation request field."""
    field = _GENERATION_FIELDS[name]
    values = value if isinstance(value, list | tuple) else [value]
    if field.datatype == "BYTES":
        values = [v.encode() if isinstance(v, str) else v for v in values]
    array: np.ndarray = np.array([values], dtype=field.dtype)
    tensor = module.InferInput(name, list(array.shape), field.datatype)
    tensor.set_data_from_numpy(array)
    return tensor
