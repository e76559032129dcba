"""The gateway's own Prometheus metrics: requests by route and status, open streams."""

from __future__ import annotations

from collections.abc import AsyncIterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ROUTES = (
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/metrics",
)


class GatewayMetrics:
    """A registry of its own, so that several gateways in one process (tests) stay apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tritonize_gateway_requests",
            "OpenAI API requests answered, by route and HTTP status",
            ["route", "status"],
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "tritonize_gateway_open_streams",
            "Server-sent event streams being sent",
            registry=self.registry,
        )

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def counted_stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`chunks`, counted in `open_streams` while they are being sent."""
        self.open_streams.inc()
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            self.open_streams.dec()
            await chunks.aclose()  # type: ignore[attr-defined]


def route_label(path: str) -> str:
    """The route a path belongs to (a bounded set of label values)."""
    if path in ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return "other"


class MetricsMiddleware:
    """Counts every answer by route and status (a stream counts when its headers go out)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_label(scope["path"])

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
