"""Running the gateway: in the foreground (`tritonize gateway`) or in a thread beside
`tritonize serve` (and the tests)."""

from __future__ import annotations

import threading
import time

import uvicorn

from tritonize.errors import TritonizeError

from .app import GatewayConfig, create_app


def _server(config: GatewayConfig, host: str, port: int) -> uvicorn.Server:
    settings = uvicorn.Config(
        create_app(config), host=host, port=port, log_level="warning", access_log=False,
        lifespan="on", timeout_graceful_shutdown=5,
    )  # fmt: skip
    return uvicorn.Server(settings)


def run_gateway(config: GatewayConfig, host: str = "127.0.0.1", port: int = 9000) -> None:
    """Serve until Ctrl-C or SIGTERM."""
    _server(config, host, port).run()


class GatewayThread:
    """The gateway on its own event loop in a daemon thread; `stop` ends it."""

    def __init__(self, config: GatewayConfig, host: str = "127.0.0.1", port: int = 9000) -> None:
        self.url = f"http://{host}:{port}"
        self._server = _server(config, host, port)
        self._thread = threading.Thread(target=self._server.run, name="gateway", daemon=True)

    def start(self, timeout_s: float = 10.0) -> GatewayThread:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise TritonizeError(f"the OpenAI gateway could not start on {self.url}")
            if time.monotonic() > deadline:
                raise TritonizeError(f"the OpenAI gateway did not start within {timeout_s:g} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
