"""Own a tritonserver process: start, wait for readiness, keep its log, stop it cleanly."""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tritonize.api_key import API_KEY_HEADER
from tritonize.errors import ServerError
from tritonize.processes import die_with_parent, stop_process
from tritonize.progress import note
from tritonize.repository.builds import startup_models
from tritonize.repository.canary import end_stale_canaries
from tritonize.repository.checker import check_repository, serves_a_plan
from tritonize.repository.configs import ModelConfig
from tritonize.server import leftovers
from tritonize.server.bundled import BundledTriton
from tritonize.server.private import (
    ensure_private_dir,
    fresh_copy,
    open_log,
    private_root,
    remove_orphan_copies,
    remove_tree,
)
from tritonize.triton_models.sampling import SAMPLING_VARIABLES, Sampling

__all__ = ["API_KEY_HEADER", "RESTRICTED_APIS", "LocalServer", "ServerConfig"]

# Everything but inference, health, metadata and model-config needs the key. Model config stays
# open: perf_analyzer, genai-perf and Triton's OpenAI frontend read it, and it holds no secret.
RESTRICTED_APIS = ("shared-memory", "model-repository", "statistics", "trace", "logging")
# Lines of a tritonserver log that say why it stopped.
_ERROR_LINE = re.compile(r"^E\d{4} |error|unrecognized option|invalid", re.IGNORECASE)
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
    # Hex, so a key never starts with "-" and reads as an option after `--api-key`.
    api_key: str = field(default_factory=lambda: secrets.token_hex(24), repr=False)
    log_file: Path | None = None
    exit_timeout_s: int = 10
    extra_args: tuple[str, ...] = ()
    tritonserver: Path | None = None  # a binary of one's own, e.g. the official container's
    sampling: Sampling | None = None  # opt-in: requests' texts kept for the next training round

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
        return self.log_file or private_root() / f"tritonserver-{self.http_port}.log"

    def arguments(self, binary: Path, backends: Path | None, shm_prefix: str) -> list[str]:
        h = self.host
        restricted = f"{','.join(RESTRICTED_APIS)}:{API_KEY_HEADER}={self.api_key}"
        return [
            str(binary),
            f"--model-repository={self.repository.resolve()}",
            *([f"--backend-directory={backends}"] if backends else []),
            # This run's stubs and shm regions carry the prefix: they can be found by it.
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            f"--http-address={h}",
            f"--http-port={self.http_port}",
            f"--grpc-address={h}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={h}",
            f"--metrics-port={self.metrics_port}",
            # The bundled server is CPU-only; a binary of one's own may have GPUs to report.
            *(["--allow-gpu-metrics=false"] if backends else []),
            "--exit-on-error=true",
            # Readiness says Triton answers; whether each model does is `tritonize health`'s
            # (a real request). Strict readiness would count a model that failed to load (a
            # rollout's broken candidate) until a restart: the whole server out of rotation.
            "--strict-readiness=false",
            # Latency summaries (p50..p99 over a sliding minute) give server-side percentiles.
            "--metrics-config=summary_latencies=true",
            # Explicit control so that load/unload work, behind the key below. The public
            # models load (an ensemble brings its steps); builds that do not serve wait on
            # disk until a rollout loads them.
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in startup_models(self.repository)),
            f"--http-restricted-api={restricted}",
            f"--grpc-restricted-protocol={restricted}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            *self.extra_args,
        ]


@dataclass(frozen=True)
class Launch:
    """What one start needs: the binary, its environment and this run's private files."""

    binary: Path
    environment: dict[str, str]
    backends: Path | None  # a fresh copy of the bundled Python backend, removed at stop

    @classmethod
    def prepare(cls, tritonserver: Path | None) -> Launch:
        bundled = _bundled_or_none(tritonserver)
        if bundled is None:
            assert tritonserver is not None
            env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
            return cls(binary=tritonserver, environment=env, backends=None)
        sources = bundled.backend_files()
        remove_orphan_copies(private_root(), "backends")  # those of a killed owner
        backends = fresh_copy(sources, private_root(), "backends")
        return cls(binary=bundled.binary, environment=bundled.environment(), backends=backends)


class LocalServer:
    """A tritonserver child process that dies with its parent.

    >>> with LocalServer(ServerConfig(Path("model_repository"))) as server:
    ...     print(server.config.http_url)
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_after_s: float | None = None
        self.shm_prefix = ""
        self._launch: Launch | None = None
        self.started_at = 0.0

    def start(self, timeout_s: float = 120.0) -> None:
        """Check the repository and ports, launch, and wait until every model is ready."""
        leftovers.remove_orphans()
        for canary in end_stale_canaries(self.config.repository):  # its command is gone
            note(f"`{canary.name}`: a canary of build {canary.candidate} was left running; "
                 f"it serves build {canary.serving} alone again")  # fmt: skip
        configs = check_repository(self.config.repository)
        if _bundled_or_none(self.config.tritonserver) is not None:
            _ensure_bundled_backends(configs)
        self._ensure_ports_free()
        self.launch()
        self.wait_ready(timeout_s)

    def launch(self) -> None:
        """Start tritonserver with this run's own backend copy, shm prefix and log."""
        self._launch = Launch.prepare(self.config.tritonserver)
        self.shm_prefix = leftovers.new_prefix()
        try:
            log = self._open_log()
        except ServerError:
            self.clean_up()
            raise
        self.started_at = time.perf_counter()
        try:
            self.process = subprocess.Popen(
                self.config.arguments(self._launch.binary, self._launch.backends, self.shm_prefix),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._environment(self._launch.environment),
                preexec_fn=die_with_parent,
                # Its own session: a terminal's Ctrl-C reaches `serve`, which drains it first.
                start_new_session=True,
            )
        finally:
            os.close(log)

    def _environment(self, inherited: dict[str, str]) -> dict[str, str]:
        """The server's environment: request sampling as configured here, and only so."""
        env = {k: v for k, v in inherited.items() if k not in SAMPLING_VARIABLES}
        return env | (self.config.sampling.environment() if self.config.sampling else {})

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; then remove this run's leftovers."""
        code = None if self.process is None else stop_process(self.process, timeout_s)
        self.clean_up()
        return code

    def clean_up(self) -> tuple[int, int]:
        """Kill this run's stubs, remove its shm regions and backend copy: (stubs, regions)."""
        removed = leftovers.remove_leftovers(self.shm_prefix) if self.shm_prefix else (0, 0)
        remove_tree(self._launch.backends if self._launch else None)
        return removed

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
        """The log's error lines (Triton's `E<date>` lines, a refused option), else its end:
        a refused flag is printed first and then buried under the whole usage text."""
        try:
            log = self.config.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [line for line in log if _ERROR_LINE.search(line)]
        return "\n".join((errors or log)[-lines:])

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

    def _open_log(self) -> int:
        path = self.config.log_path
        if str(path) == "-":  # the log goes where `serve` writes (a container's output)
            return os.dup(sys.stdout.fileno())
        if self.config.log_file is None:
            ensure_private_dir(path.parent)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        return open_log(path)

    def _ensure_ports_free(self) -> None:
        ports = {
            "http": self.config.http_port,
            "grpc": self.config.grpc_port,
            "metrics": self.config.metrics_port,
        }
        for first, second in (("http", "grpc"), ("http", "metrics"), ("grpc", "metrics")):
            if ports[first] == ports[second]:
                raise ServerError(
                    f"the {first} and {second} ports are both {ports[first]}: each endpoint "
                    f"needs its own (--{first}-port, --{second}-port)"
                )
        for name, number in ports.items():
            ensure_port_free(self.config.host, number, f"--{name}-port", name)

    def wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.clean_up()
                raise ServerError(
                    f"tritonserver exited with code {code} before it was ready; "
                    f"log {self.config.log_path}:\n{self.log_tail()}"
                )
            if self.is_ready():
                self.ready_after_s = time.perf_counter() - self.started_at
                return
            time.sleep(0.25)
        self.stop()
        raise ServerError(
            f"tritonserver was not ready within {timeout_s:.0f} s; "
            f"log {self.config.log_path}:\n{self.log_tail()}"
        )


def _bundled_or_none(tritonserver: Path | None) -> BundledTriton | None:
    """The bundled server, unless `tritonserver` names another binary."""
    if tritonserver is not None:
        if not tritonserver.is_file() or not os.access(tritonserver, os.X_OK):
            raise ServerError(f"--tritonserver {tritonserver}: not an executable file")
        try:
            bundled = BundledTriton.find()
        except ServerError:
            return None
        return bundled if tritonserver.resolve() == bundled.binary.resolve() else None
    return BundledTriton.find()


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


def ensure_port_free(host: str, port: int, flag: str, name: str = "") -> None:
    """Refuse a busy port before anything starts, naming the flag that chooses another."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server will: lingering TIME_WAIT connections do not make a port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            what = f"{name} port" if name else "port"
            if exc.errno == errno.EADDRINUSE:
                raise ServerError(
                    f"{what} {port} on {host} is in use: choose another with {flag}"
                ) from None
            raise ServerError(
                f"cannot listen on {host}:{port} ({exc.strerror}): --host must be an address "
                "of this machine (127.0.0.1 by default, 0.0.0.0 for every interface)"
            ) from None
