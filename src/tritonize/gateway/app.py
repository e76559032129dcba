"""The ASGI application: OpenAI's routes over a `TritonBackend`."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tritonize.chat import ChatTemplateError, render_chat

from . import shapes
from .errors import ApiError, bad_request
from .metrics import GatewayMetrics, MetricsMiddleware
from .params import GenerationRequest, parse_embedding, parse_generation
from .triton import EMBEDDINGS, GENERATION, Delta, ModelInfo, TritonBackend

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass(frozen=True)
class GatewayConfig:
    triton_url: str = "127.0.0.1:8001"  # gRPC
    api_key: str | None = None  # clients send it as `Authorization: Bearer KEY`
    triton_api_key: str | None = None  # Triton's admin key: listing models needs it
    response_timeout_s: float = 300.0


Handler = Callable[[Request], Awaitable[Response]]


def create_app(config: GatewayConfig, metrics: GatewayMetrics | None = None) -> Starlette:
    backend = TritonBackend(config.triton_url, config.triton_api_key, config.response_timeout_s)
    metrics = metrics or GatewayMetrics()
    api = _Api(backend, metrics)

    def guarded(handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            try:
                _authorize(request, config.api_key)
                return await handler(request)
            except ApiError as error:
                return JSONResponse(error.body(), status_code=error.status)

        return run

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await backend.close()

    routes = [
        Route("/v1/models", guarded(api.list_models), methods=["GET"]),
        Route("/v1/models/{model:path}", guarded(api.get_model), methods=["GET"]),
        Route("/v1/completions", guarded(api.completions), methods=["POST"]),
        Route("/v1/chat/completions", guarded(api.chat_completions), methods=["POST"]),
        Route("/v1/embeddings", guarded(api.embeddings), methods=["POST"]),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _authorize(request: Request, key: str | None) -> None:
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(
            401,
            "Incorrect or missing API key: send it as the header `Authorization: Bearer KEY`",
            code="invalid_api_key",
        )


class _Api:
    def __init__(self, backend: TritonBackend, metrics: GatewayMetrics) -> None:
        self.backend = backend
        self.metrics = metrics

    async def list_models(self, request: Request) -> Response:
        models = await self.backend.models()
        return JSONResponse({"object": "list", "data": [shapes.model_card(m.name) for m in models]})

    async def get_model(self, request: Request) -> Response:
        info = await self.backend.model(request.path_params["model"])
        if info.kind is None:
            raise _wrong_kind(info, "the OpenAI API")
        return JSONResponse(shapes.model_card(info.name))

    async def embeddings(self, request: Request) -> Response:
        parsed = parse_embedding(await _json(request))
        info = await self.backend.model(parsed.model)
        if info.kind != EMBEDDINGS:
            raise _wrong_kind(info, "/v1/embeddings")
        if parsed.dimensions is not None and parsed.dimensions != info.dimension:
            raise bad_request(
                "dimensions",
                f"`dimensions` = {parsed.dimensions}: model `{info.name}` gives vectors of "
                f"{info.dimension} only (it was not trained to be shortened)",
            )
        vectors = await self.backend.embed(info, parsed.texts)
        return JSONResponse(shapes.embeddings(info.name, vectors, parsed.encoding_format))

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def _generate(self, request: Request, chat: bool) -> Response:
        parsed = parse_generation(await _json(request), chat)
        info = await self.backend.model(parsed.model)
        if info.kind != GENERATION:
            raise _wrong_kind(info, "/v1/chat/completions" if chat else "/v1/completions")
        if parsed.n > info.max_active:
            raise bad_request(
                "n", f"`n` = {parsed.n}: model `{info.name}` generates at most "
                f"{info.max_active} sequences at once"
            )  # fmt: skip
        prompt = _chat_prompt(info, parsed) if chat else str(parsed.prompt)
        default = info.max_tokens_limit if chat else COMPLETIONS_DEFAULT_MAX_TOKENS
        max_tokens = parsed.max_tokens or default
        fields = parsed.fields(prompt, max_tokens)
        run = _Generation(self.backend, info, parsed, chat, max_tokens)
        events = run.merged(fields)
        try:
            first = await anext(events)
        except ApiError as error:
            raise run.named(error) from None
        if not parsed.stream:
            return JSONResponse(await run.whole(first, events))
        return _SseResponse(self.metrics.counted_stream(run.stream(first, events)))


class _Generation:
    """The n sequences of one request, each on its own gRPC stream."""

    def __init__(
        self, backend: TritonBackend, info: ModelInfo, parsed: GenerationRequest, chat: bool,
        max_tokens: int,
    ) -> None:  # fmt: skip
        self.backend = backend
        self.info = info
        self.parsed = parsed
        self.chat = chat
        self.max_tokens = max_tokens
        self.ident = shapes.new_id("chatcmpl" if chat else "cmpl")

    def named(self, error: ApiError) -> ApiError:
        """The generator names its tensors: name the OpenAI field the client sent instead."""
        renamed = {
            "prompt": "messages" if self.chat else "prompt",
            "max_tokens": self.parsed.max_tokens_field,
        }
        error.param = renamed.get(error.param or "", error.param)
        if error.param is not None and error.message.startswith("`"):
            tensor = error.message[1:].split("`", 1)[0]
            error.message = f"`{error.param}`{error.message[len(tensor) + 2 :]}"
        return error

    async def merged(self, fields: dict[str, Any]) -> AsyncGenerator[tuple[int, Delta]]:
        """(choice, delta) from all n streams as they come; leaving early cancels them all."""
        queue: asyncio.Queue[tuple[int, Delta | None, ApiError | None]] = asyncio.Queue()

        async def pump(index: int) -> None:
            try:
                async for delta in self.backend.generate(self.info.name, fields):
                    await queue.put((index, delta, None))
                await queue.put((index, None, None))
            except ApiError as error:
                await queue.put((index, None, error))

        if self.parsed.n == 1:  # one stream: nothing to merge, no queue or task per token
            stream = self.backend.generate(self.info.name, fields)
            try:
                async for only in stream:
                    yield 0, only
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            return
        tasks = [asyncio.create_task(pump(i)) for i in range(self.parsed.n)]
        try:
            remaining = len(tasks)
            while remaining:
                index, delta, error = await queue.get()
                if error is not None:
                    raise error
                if delta is None:
                    remaining -= 1
                    continue
                yield index, delta
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _reason(self, delta: Delta) -> str:
        return shapes.finish_reason(
            delta.input_tokens, delta.output_tokens, self.max_tokens, self.info.context_window
        )

    async def whole(
        self, first: tuple[int, Delta], rest: AsyncGenerator[tuple[int, Delta]]
    ) -> dict[str, Any]:
        texts = [""] * self.parsed.n
        last: dict[int, Delta] = {}
        try:
            index, delta = first
            while True:
                texts[index] += delta.text
                last[index] = delta
                index, delta = await anext(rest)
        except StopAsyncIteration:
            pass
        except ApiError as error:
            raise self.named(error) from None
        reasons = [self._reason(last[i]) for i in range(self.parsed.n)]
        counts = shapes.usage(
            last[0].input_tokens, sum(last[i].output_tokens for i in range(self.parsed.n))
        )
        return shapes.completion(self.chat, self.ident, self.info.name, texts, reasons, counts)

    async def stream(
        self, first: tuple[int, Delta], rest: AsyncGenerator[tuple[int, Delta]]
    ) -> AsyncIterator[bytes]:
        """Server-sent events in OpenAI's chunk format, then `data: [DONE]`. An error after
        the first chunk (the status is sent by then) comes as an event holding `error`.

        The last text chunk, the usage chunk and `[DONE]` follow one another at once: they go
        out as one write (each write costs a pass through the HTTP stack and a system call)."""
        started: set[int] = set()
        last: dict[int, Delta] = {}
        writer = shapes.ChunkWriter(self.chat, self.ident, self.info.name)
        tail = b""
        try:
            item: tuple[int, Delta] | None = first
            while item is not None:
                index, delta = item
                last[index] = delta
                reason = self._reason(delta) if delta.final else None
                if delta.text or reason or index not in started:
                    chunk = writer.text(index, delta.text, reason, first=index not in started)
                    started.add(index)
                    if delta.final and sum(d.final for d in last.values()) == self.parsed.n:
                        tail = chunk  # every choice has ended: nothing comes in between
                    else:
                        yield chunk
                item = await anext(rest, None)
        except ApiError as error:
            yield shapes.event(self.named(error).body())
            yield shapes.event("[DONE]")
            return
        finally:
            await rest.aclose()
        if self.parsed.include_usage:
            counts = shapes.usage(last[0].input_tokens, sum(d.output_tokens for d in last.values()))
            tail += writer.usage(counts)
        yield tail + shapes.event("[DONE]")


def _chat_prompt(info: ModelInfo, parsed: GenerationRequest) -> str:
    if info.chat_template is None:
        raise bad_request(
            "messages",
            f"model `{info.name}` has no chat template (its checkpoint carries none): "
            "use /v1/completions with a prompt",
        )
    try:
        return render_chat(info.chat_template, list(parsed.messages or []))
    except ChatTemplateError as exc:
        raise bad_request("messages", str(exc)) from None


def _wrong_kind(info: ModelInfo, route: str) -> ApiError:
    kinds = {GENERATION: "a generation model", EMBEDDINGS: "an embedding model"}
    what = kinds.get(info.kind or "", "neither a generation nor an embedding model")
    return bad_request("model", f"model `{info.name}` is {what}: {route} cannot call it")


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not JSON: {exc}") from None


class _SseResponse(StreamingResponse):
    """Server-sent events that stop, whatever the ASGI version, when the client goes away:
    the body iterator is cancelled, which cancels the gRPC streams and frees their slots."""

    def __init__(self, content: AsyncIterator[bytes]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def respond() -> None:
            await self.stream_response(send)

        streaming = asyncio.ensure_future(respond())
        disconnect = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait([streaming, disconnect], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, disconnect):
                task.cancel()
            await asyncio.gather(streaming, disconnect, return_exceptions=True)
        if not streaming.cancelled() and (error := streaming.exception()) is not None:
            raise error
