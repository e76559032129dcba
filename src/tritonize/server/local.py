"""Own a tritonserver process: start, wait for readiness, keep its log, stop it cleanly."""

from __future__ import annotations

import hashlib
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tritonize.api_key import API_KEY_HEADER
from tritonize.errors import ServerError
from tritonize.processes import die_with_parent, stop_process
from tritonize.repository.checker import check_repository, serves_a_plan
from tritonize.repository.configs import ModelConfig
from tritonize.server.bundled import BundledTriton

# Backends the bundled CPU server lacks.
_GPU_PLATFORMS = ("tensorrt_plan", "onnxruntime_onnx")


@dataclass(frozen=True)
class ServerConfig:
    """How to run the local server. Loopback only unless `host` says otherwise."""

    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    log_file: Path | None = None
    exit_timeout_s: int = 10
    extra_args: tuple[str, ...] = ()

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self.log_file or Path(tempfile.gettempdir()) / f"tritonize-{self.http_port}.log"

    def arguments(self, binary: Path, backends: Path) -> list[str]:
        h = self.host
        return [
            str(binary),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={backends}",
            f"--http-address={h}",
            f"--http-port={self.http_port}",
            f"--grpc-address={h}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={h}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            # Latency summaries (p50..p99 over a sliding minute) give server-side percentiles.
            "--metrics-config=summary_latencies=true",
            # Explicit control so that load/unload work, behind the key below.
            "--model-control-mode=explicit",
            "--load-model=*",
            f"--http-restricted-api=model-repository:{API_KEY_HEADER}={self.api_key}",
            f"--grpc-restricted-protocol=model-repository:{API_KEY_HEADER}={self.api_key}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            *self.extra_args,
        ]


class LocalServer:
    """A tritonserver child process that dies with its parent.

    >>> with LocalServer(ServerConfig(Path("model_repository"))) as server:
    ...     print(server.config.http_url)
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_after_s: float | None = None

    def start(self, timeout_s: float = 120.0) -> None:
        """Check the repository and ports, launch, and wait until every model is ready."""
        _ensure_bundled_backends(check_repository(self.config.repository))
        for name, port in (
            ("http", self.config.http_port),
            ("grpc", self.config.grpc_port),
            ("metrics", self.config.metrics_port),
        ):
            _ensure_port_free(self.config.host, port, name)
        bundled = BundledTriton.find()
        backends = bundled.backend_directory(_cache_dir(bundled.root))
        self.config.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with self.config.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.config.arguments(bundled.binary, backends),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=bundled.environment(),
                preexec_fn=die_with_parent,
            )
        self._wait_ready(timeout_s)
        self.ready_after_s = time.perf_counter() - started

    def terminate(self) -> None:
        """Ask the server to stop (SIGTERM) without waiting: safe in a signal handler."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`. Returns the exit code."""
        return None if self.process is None else stop_process(self.process, timeout_s)

    def wait(self) -> int:
        """Block until the server exits."""
        assert self.process is not None, "start() first"
        return self.process.wait()

    def is_ready(self) -> bool:
        url = f"http://{self.config.http_url}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.config.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code {self.process.returncode} before it was ready; "
                    f"log {self.config.log_path}:\n{self.log_tail()}"
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        self.stop()
        raise ServerError(
            f"tritonserver was not ready within {timeout_s:.0f} s; "
            f"log {self.config.log_path}:\n{self.log_tail()}"
        )


def _ensure_bundled_backends(configs: dict[str, ModelConfig]) -> None:
    """The bundled server has the Python backend only: say so before it fails to load."""
    others = {
        name: c.platform or "a TensorRT decoder plan"
        for name, c in configs.items()
        if c.platform in _GPU_PLATFORMS or serves_a_plan(c)
    }
    if others:
        listing = ", ".join(f"`{name}` ({platform})" for name, platform in sorted(others.items()))
        raise ServerError(
            "the bundled CPU tritonserver has the Python backend only and no GPU: it cannot "
            f"serve {listing}; serve this repository with the official Triton container "
            "(`docker compose up triton`), or build with `--target local`"
        )


def _ensure_port_free(host: str, port: int, name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server will: lingering TIME_WAIT connections do not make a port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServerError(
                f"{name} port {port} on {host} is in use ({exc.strerror}): "
                f"choose another with --{name}-port"
            ) from None


def _cache_dir(root: Path) -> Path:
    key = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "tritonize-backends" / key
