"""The benchmark's load generator against a real HTTP/1.1 keep-alive server on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from tritonize.bench.load import HttpTarget, run_load


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Triton's front-end
    seen: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Handler.seen.append(body)
        answer = b"refused" if body == b"bad" else b"ok:" + body
        self.send_response(500 if body == b"bad" else 200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def test_every_answer_in_the_window_is_counted_and_failures_apart(server) -> None:
    target = HttpTarget("127.0.0.1", server.server_address[1], "/infer", [b"a", b"bad", b"c"])
    result = run_load(target, concurrency=3, seconds=1.0, warmup_s=0.3)
    answered, failed = len(result.latencies), result.failures
    assert answered > 10 and failed > 5
    # One body in three is refused: the split holds within the window's edges.
    assert abs(failed / (answered + failed) - 1 / 3) < 0.1
    assert result.errors and result.errors[0].startswith("HTTP 500")
    # The warm-up's requests were sent but are not counted.
    assert len(Handler.seen) > answered + failed
    assert result.per_second == pytest.approx(answered / 1.0)
    assert 0 < result.percentile_ms(50) <= result.percentile_ms(99)


def test_a_closed_connection_counts_as_a_failure_and_the_client_reconnects(server) -> None:
    class Closing(Handler):
        def do_POST(self) -> None:
            if len(Handler.seen) % 5 == 4:
                Handler.seen.append(b"dropped")
                self.close_connection = True
                self.rfile.read(int(self.headers["Content-Length"]))
                return
            super().do_POST()

    server.RequestHandlerClass = Closing
    target = HttpTarget("127.0.0.1", server.server_address[1], "/infer", [b"x"])
    result = run_load(target, concurrency=1, seconds=1.0, warmup_s=0.1)
    assert result.failures > 0 and len(result.latencies) > 3 * result.failures
    assert "connection lost" in result.errors[0]
