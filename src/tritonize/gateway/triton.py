"""Triton over gRPC with tritonclient's asyncio client: model facts, generation, embeddings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aio
from tritonclient.grpc import InferResult
from tritonclient.utils import InferenceServerException

from tritonize.api_key import API_KEY_HEADER
from tritonize.chat import PARAMETER as CHAT_TEMPLATE_PARAMETER
from tritonize.chat import ChatTemplateError, template_from_parameter
from tritonize.client import generation_input
from tritonize.triton_models.common import EMBEDDING, TEXT

from .errors import ApiError, triton_unreachable, unknown_model

GENERATION = "generation"
EMBEDDINGS = "embedding"


@dataclass(frozen=True)
class ModelInfo:
    """What the gateway needs to know of one served model."""

    name: str
    kind: str | None  # GENERATION, EMBEDDINGS, or None: a model the OpenAI API cannot call
    max_batch_size: int = 0
    dimension: int = 0  # embeddings: the vector's size
    context_window: int = 0  # generation
    max_tokens_limit: int = 0
    max_active: int = 1
    chat_template: dict[str, Any] | None = None


@dataclass(frozen=True)
class Delta:
    """One response of a generation stream: new text and the token counts so far."""

    text: str
    input_tokens: int
    output_tokens: int
    final: bool


class TritonBackend:
    """One asyncio gRPC client, made in the event loop that serves the gateway."""

    def __init__(
        self,
        url: str,
        admin_key: str | None = None,
        response_timeout_s: float = 300.0,
        info_ttl_s: float = 5.0,
    ) -> None:
        self.url = url
        self.admin_key = admin_key
        self.response_timeout_s = response_timeout_s
        self.info_ttl_s = info_ttl_s  # models are reloaded: facts are asked again after this
        self._client: aio.InferenceServerClient | None = None
        self._infos: dict[str, tuple[float, ModelInfo]] = {}

    @property
    def client(self) -> aio.InferenceServerClient:
        if self._client is None:
            self._client = aio.InferenceServerClient(self.url)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    # -- models ------------------------------------------------------------------------------
    async def model(self, name: str) -> ModelInfo:
        """`name`'s facts (404 if Triton does not serve it)."""
        cached = self._infos.get(name)
        if cached is not None and time.monotonic() - cached[0] < self.info_ttl_s:
            return cached[1]
        try:
            metadata = await self.client.get_model_metadata(name, as_json=True)
            config = (await self.client.get_model_config(name, as_json=True))["config"]
        except InferenceServerException as exc:
            raise self._error(exc, name) from None
        info = model_info(name, metadata, config)
        self._infos[name] = (time.monotonic(), info)
        return info

    async def models(self) -> list[ModelInfo]:
        """Every ready model the OpenAI API can call (Triton's index needs the admin key)."""
        if self.admin_key is None:
            raise ApiError(
                503,
                "listing models needs Triton's admin key: start the gateway with "
                "--triton-api-key (env TRITONIZE_API_KEY), as `tritonize serve` does",
                code="triton_key_missing",
            )
        headers = {f"triton-grpc-protocol-{API_KEY_HEADER}": self.admin_key}
        try:
            index = await self.client.get_model_repository_index(headers=headers, as_json=True)
        except InferenceServerException as exc:
            raise self._error(exc, None) from None
        ready = [m["name"] for m in index.get("models", []) if m.get("state") == "READY"]
        infos = [await self.model(name) for name in sorted(set(ready))]
        return [info for info in infos if info.kind is not None]

    # -- inference ---------------------------------------------------------------------------
    async def embed(self, info: ModelInfo, texts: list[str]) -> np.ndarray:
        """EMBEDDING rows for `texts`, sent in batches of the model's max_batch_size."""
        size = info.max_batch_size or len(texts)
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        results = await asyncio.gather(*(self._embed_batch(info.name, b) for b in batches))
        return np.concatenate(results)

    async def _embed_batch(self, model: str, texts: list[str]) -> np.ndarray:
        data = np.array([[text.encode()] for text in texts], dtype=object)
        tensor = grpcclient.InferInput(TEXT, list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data)
        try:
            result = await self.client.infer(
                model, [tensor], outputs=[grpcclient.InferRequestedOutput(EMBEDDING)],
                client_timeout=self.response_timeout_s,
            )  # fmt: skip
        except InferenceServerException as exc:
            raise self._error(exc, model, param="input") from None
        return np.asarray(result.as_numpy(EMBEDDING), dtype=np.float32)

    async def generate(self, model: str, fields: dict[str, Any]) -> AsyncIterator[Delta]:
        """The generator's responses as they come, on a gRPC stream of its own.

        Closing the iterator early (the HTTP client went away) cancels the stream, and with
        it the request: the generator frees its slot at its next step."""
        inputs = [generation_input(grpcclient, name, value) for name, value in fields.items()]

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": model, "inputs": inputs}  # then half-close: Triton ends the
            # stream once this request's final response is sent

        stream = self.client.stream_infer(requests())
        finished = False
        try:
            while not finished:
                result, error = await self._next(stream, model)
                if error is not None:
                    raise generator_error(error.message(), model)
                response = result.get_response()
                final = response.parameters["triton_final_response"].bool_param
                if response.outputs:
                    yield delta_of(result, final)
                finished = final
        finally:
            if not finished:
                stream.cancel()

    async def _next(self, stream: Any, model: str) -> tuple[Any, Any]:
        try:
            async with asyncio.timeout(self.response_timeout_s):  # a timer, not a task, per call
                pair = await anext(stream)
        except StopAsyncIteration:
            raise ApiError(
                502, f"model `{model}` ended its stream without a final response"
            ) from None
        except TimeoutError:
            raise ApiError(
                504, f"model `{model}` sent nothing for {self.response_timeout_s:g} s"
            ) from None
        except grpc.aio.AioRpcError as exc:  # the stream itself failed (Triton went away)
            failure = InferenceServerException(exc.details() or "", status=str(exc.code()))
            raise self._error(failure, model) from None
        return pair[0], pair[1]

    def _error(
        self, exc: InferenceServerException, model: str | None, param: str | None = None
    ) -> ApiError:
        return triton_error(self.url, exc.status() or "", exc.message() or "", model, param)


def delta_of(result: InferResult, final: bool) -> Delta:
    """A generation response's text and counts, read from its raw output bytes: each output
    holds one element (BYTES: a 4-byte little-endian length, then the UTF-8 text; the counts:
    one little-endian integer), which costs less than three `as_numpy` per token."""
    response = result.get_response()
    raw = response.raw_output_contents
    if len(raw) != len(response.outputs):  # sent as typed contents: the general reader
        return Delta(
            text=result.as_numpy("text_output").reshape(-1)[0].decode(),
            input_tokens=int(result.as_numpy("num_input_tokens").reshape(-1)[0]),
            output_tokens=int(result.as_numpy("num_output_tokens").reshape(-1)[0]),
            final=final,
        )
    values = {output.name: value for output, value in zip(response.outputs, raw, strict=True)}
    text = values["text_output"]
    return Delta(
        text=text[4 : 4 + int.from_bytes(text[:4], "little")].decode(),
        input_tokens=int.from_bytes(values["num_input_tokens"], "little", signed=True),
        output_tokens=int.from_bytes(values["num_output_tokens"], "little", signed=True),
        final=final,
    )


def triton_error(
    url: str, status: str, message: str, model: str | None, param: str | None = None
) -> ApiError:
    """Triton's gRPC status as an HTTP answer: INVALID_ARGUMENT is the client's mistake (400),
    an unknown model 404, an unreachable server 503; anything else is the server's (500)."""
    if "unknown model" in message and model is not None:
        return unknown_model(model)
    if status.endswith("INVALID_ARGUMENT"):
        return ApiError(400, message, param=param)
    if status.endswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")) and "restricted" not in message:
        return triton_unreachable(url, message)
    return ApiError(500, f"Triton: {message}")


def generator_error(message: str, model: str) -> ApiError:
    """An error on a generation stream, which carries a message but no status code.

    The generator's refusals (RequestError) start by naming the tensor in backticks, or with
    "unknown field(s)"; its own failures start with "generation failed". So the first are 400,
    naming the OpenAI field the tensor came from, and the rest 500."""
    if message.startswith("`"):
        tensor = message[1:].split("`", 1)[0]
        return ApiError(400, message, param=OPENAI_FIELDS.get(tensor, tensor))
    if message.startswith("unknown field"):
        return ApiError(400, message)
    if "unknown model" in message:
        return unknown_model(model)
    return ApiError(500, f"model `{model}`: {message}")


# The generator's tensors and the OpenAI fields they come from.
OPENAI_FIELDS = {
    "text_input": "prompt",
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "stop_words": "stop",
}


def model_info(name: str, metadata: dict[str, Any], config: dict[str, Any]) -> ModelInfo:
    """The kind and limits of a model, from its metadata and config (as JSON)."""
    inputs = {tensor["name"] for tensor in metadata.get("inputs", [])}
    outputs = {tensor["name"]: tensor for tensor in metadata.get("outputs", [])}
    parameters = {
        key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()
    }
    max_batch_size = int(config.get("max_batch_size", 0))
    if "text_input" in inputs and "text_output" in outputs:
        return ModelInfo(
            name,
            GENERATION,
            max_batch_size=max_batch_size,
            context_window=int(parameters.get("context_window", 0)),
            max_tokens_limit=int(parameters.get("max_tokens_limit", 0)),
            max_active=int(parameters.get("max_active", 1)),
            chat_template=_chat_template(parameters.get(CHAT_TEMPLATE_PARAMETER)),
        )
    if inputs == {TEXT} and EMBEDDING in outputs:
        dimension = int(outputs[EMBEDDING]["shape"][-1])
        return ModelInfo(name, EMBEDDINGS, max_batch_size=max_batch_size, dimension=dimension)
    return ModelInfo(name, None)


def _chat_template(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        return template_from_parameter(text)
    except ChatTemplateError:
        return None  # unreadable: chat is refused as for a model without one
