"""A light closed-loop load generator: `concurrency` clients, each sending its next request as
soon as the last one is answered, over HTTP/1.1 keep-alive or gRPC.

Every request is serialized before the run (a pool of them, cycled), so what the generator
spends per request is a socket write and a read: on a 2-core machine the cores go to the
server under test, not to building requests. Its own CPU time is measured and reported.
Requests that start in the warm-up, or end after the window, are not counted.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tritonize.errors import InferenceError

REQUEST_TIMEOUT_S = 60.0  # an answer later than this is a failure, not a hung benchmark


@dataclass(frozen=True)
class HttpTarget:
    """POST `bodies` (cycled) to `path` on host:port; a 200 is a success."""

    host: str
    port: int
    path: str
    bodies: Sequence[bytes]
    content_type: str = "application/json"

    def requests(self) -> list[bytes]:
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: {self.content_type}\r\n"
        )
        return [
            f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body for body in self.bodies
        ]


@dataclass(frozen=True)
class GrpcTarget:
    """Triton's ModelInfer with serialized `ModelInferRequest`s (cycled)."""

    address: str  # host:port
    bodies: Sequence[bytes]


def triton_http_target(host: str, port: int, model: str, texts: Sequence[str]) -> HttpTarget:
    """One text per request as TEXT [1, 1], JSON in, binary out (tritonclient's default)."""
    bodies = [
        json.dumps({
            "inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [text]}],
            "parameters": {"binary_data_output": True},
        }).encode()
        for text in texts
    ]  # fmt: skip
    return HttpTarget(host, port, f"/v2/models/{model}/infer", bodies)


def triton_grpc_target(address: str, model: str, texts: Sequence[str]) -> GrpcTarget:
    """One text per request as TEXT [1, 1] in raw_input_contents (tritonclient's encoding)."""
    from tritonclient.grpc import service_pb2

    bodies = []
    for text in texts:
        data = text.encode()
        request = service_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1])
        request.raw_input_contents.append(struct.pack("<I", len(data)) + data)
        bodies.append(request.SerializeToString())
    return GrpcTarget(address, bodies)


@dataclass
class LoadResult:
    """What one run at one concurrency measured (latencies in seconds, sorted)."""

    concurrency: int
    window_s: float
    latencies: np.ndarray
    failures: int
    client_cpu_s: float
    errors: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.window_s

    def percentile_ms(self, q: float) -> float:
        if not len(self.latencies):
            return float("nan")
        return float(np.percentile(self.latencies, q) * 1e3)


class _Window:
    """Which requests count: those started after the warm-up and answered before the end."""

    def __init__(self, warmup_s: float, seconds: float) -> None:
        now = time.perf_counter()
        self.start, self.end = now + warmup_s, now + warmup_s + seconds
        self.latencies: list[float] = []
        self.failures = 0
        self.errors: list[str] = []

    def record(self, started: float, ok: bool, error: str = "") -> None:
        finished = time.perf_counter()
        if started < self.start or finished > self.end:
            return
        if ok:
            self.latencies.append(finished - started)
        else:
            self.failures += 1
            if len(self.errors) < 5:
                self.errors.append(error)

    @property
    def open(self) -> bool:
        return time.perf_counter() < self.end


async def _http_client(target: HttpTarget, payloads: list[bytes], offset: int, w: _Window) -> None:
    """One keep-alive connection; a dropped one counts as a failure and is opened again."""
    i = offset
    while w.open:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        try:
            while w.open:
                started = time.perf_counter()
                writer.write(payloads[i % len(payloads)])
                i += 1
                try:
                    status, body, closing = await asyncio.wait_for(
                        _read_response(reader), REQUEST_TIMEOUT_S
                    )
                except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    w.record(started, False, f"connection lost: {exc!r}")
                    break
                w.record(started, status == 200, f"HTTP {status}: {body[:200]!r}")
                if closing:  # a server without keep-alive (the seed's Flask): a new connection
                    break
        finally:
            writer.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, whether the server closes the connection after it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {
        name.strip().lower(): value.strip()
        for name, value in (line.split(":", 1) for line in lines[1:] if ":" in line)
    }
    length = int(fields["content-length"]) if "content-length" in fields else None
    if length is None:
        raise InferenceError(f"the server answered without a Content-Length: {lines[0]}")
    closing = fields.get("connection", "").lower() == "close"
    return status, await reader.readexactly(length), closing


async def _grpc_clients(target: GrpcTarget, concurrency: int, w: _Window) -> None:
    import grpc

    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(target.address, options=options) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        async def client(offset: int) -> None:
            i = offset
            while w.open:
                started = time.perf_counter()
                try:
                    await infer(target.bodies[i % len(target.bodies)], timeout=REQUEST_TIMEOUT_S)
                    w.record(started, True)
                except grpc.aio.AioRpcError as exc:
                    w.record(started, False, f"{exc.code().name}: {exc.details()}")
                i += 1

        await asyncio.gather(*(client(c) for c in range(concurrency)))


def run_load(
    target: HttpTarget | GrpcTarget, concurrency: int, seconds: float, warmup_s: float = 2.0
) -> LoadResult:
    """Drive `target` with `concurrency` closed-loop clients for `warmup_s + seconds`."""

    async def main(w: _Window) -> None:
        if isinstance(target, GrpcTarget):
            await _grpc_clients(target, concurrency, w)
        else:
            payloads = target.requests()
            await asyncio.gather(
                *(_http_client(target, payloads, c, w) for c in range(concurrency))
            )

    cpu = time.process_time()
    window = _Window(warmup_s, seconds)
    asyncio.run(main(window))
    return LoadResult(
        concurrency=concurrency,
        window_s=seconds,
        latencies=np.sort(np.asarray(window.latencies)),
        failures=window.failures,
        client_cpu_s=time.process_time() - cpu,
        errors=window.errors,
    )
