"""Run a Locust scenario headless against Triton, read Triton's figures, gate, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tritonize.errors import SpecError, TritonizeError
from tritonize.loadtest.report import VERSIONS_CSV
from tritonize.loadtest.slo import ClientFigures, Gate, Slo, evaluate, load_client_figures
from tritonize.monitor.figures import PENDING, ServerFigures, figures
from tritonize.monitor.prometheus import PrometheusSource
from tritonize.monitor.scrape import default_metrics_url, quiet_reading, read
from tritonize.processes import free_ports
from tritonize.triton_models.common import build_of

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SCENARIO_NAMES = ("smoke", "steady", "ramp", "spike", "soak")
# Locust's and Triton's success counts may differ by a request per user (one its stop timeout
# cut short: Triton counts it, Locust does not) plus this share.
CONSISTENCY = 0.02
FINAL_STATS = "locust_final_stats.csv"  # written by the locustfile as Locust quits
USER_CLASSES = {
    "http": "TritonHttpUser",
    "grpc": "TritonGrpcUser",
    "sse": "TritonStreamUser",
    "openai": "OpenAICompletionStreamUser",  # through the gateway: /v1/completions
    "openai-chat": "OpenAIChatStreamUser",  # /v1/chat/completions
}
STREAMING = ("sse", "openai", "openai-chat")  # generation: one E2E request per stream
DEFAULT_GATEWAY_URL = "http://127.0.0.1:9000"


def client_protocol(protocol: str) -> str:
    """The tritonclient protocol behind a load-test protocol (`sse` streams over HTTP; the
    OpenAI modes read the model's config from Triton over HTTP)."""
    return "grpc" if protocol == "grpc" else "http"


@dataclass(frozen=True)
class LoadTest:
    """One load test run."""

    model: str
    url: str = "127.0.0.1:8000"
    protocol: str = "http"
    scenario: str = "steady"
    users: int = 8
    seconds: float = 60.0
    step_seconds: float = 15.0  # ramp
    slo_file: Path | None = None
    prometheus_url: str | None = None
    metrics_url: str | None = None  # default: http://<url host>:8002/metrics
    workers: int = 0  # 0: one local Locust process; N: a master and N workers
    out: Path = Path("reports/loadtest")
    texts_file: Path | None = None
    texts_per_request: int = 1
    max_tokens: int = 32  # sse: tokens per generation request
    engine_model: str | None = None  # default: <model>_engine
    gateway_url: str = DEFAULT_GATEWAY_URL  # openai, openai-chat: the gateway in front of `url`

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIO_NAMES:
            raise SpecError(
                f"`scenario` = {self.scenario!r}: expected one of {', '.join(SCENARIO_NAMES)}"
            )
        if self.protocol not in USER_CLASSES:
            raise SpecError(
                f"`protocol` = {self.protocol!r}: expected http, grpc, or for generation sse, "
                "openai or openai-chat"
            )
        if self.users < 1 or self.seconds <= 0 or self.workers < 0:
            raise SpecError("`users` >= 1, `duration` > 0 and `workers` >= 0 are required")
        if self.texts_file is not None:
            _check_texts_file(Path(self.texts_file))

    @property
    def peak_users(self) -> int:
        """Users running at once at most: the smoke scenario runs one, whatever `users` says."""
        return 1 if self.scenario == "smoke" else self.users

    @property
    def streams(self) -> bool:
        return self.protocol in STREAMING

    @property
    def target(self) -> str:
        """Where Locust sends its requests: Triton, or the gateway in front of it."""
        return self.gateway_url if self.protocol.startswith("openai") else self.url

    @property
    def metrics(self) -> str:
        return self.metrics_url or default_metrics_url(self.url)


@dataclass
class LoadTestResult:
    test: LoadTest
    seconds: float
    client: ClientFigures
    server: ServerFigures  # from Prometheus when given, else scraped directly
    server_source: str
    gates: list[Gate]
    direct: ServerFigures  # always: counters scraped straight from Triton
    ramp: dict[str, Any] | None = None
    locust_exit_code: int = 0

    @property
    def client_successes(self) -> int:
        return self.client.requests - self.client.failures

    @property
    def consistency_allowance(self) -> float:
        """How far Locust's and Triton's success counts may differ (see CONSISTENCY)."""
        return self.test.peak_users + CONSISTENCY * self.server.successes

    @property
    def consistent(self) -> bool:
        difference = abs(self.client_successes - self.server.successes)
        return difference <= self.consistency_allowance

    @property
    def passed(self) -> bool:
        return (
            all(g.passed for g in self.gates)
            and self.consistent
            and self.client_successes > 0
            and self.locust_exit_code == 0
        )

    def failures(self) -> list[str]:
        """Every failed gate, named."""
        failed = [g.describe() for g in self.gates if not g.passed]
        if self.client_successes <= 0:
            failed.append(
                f"FAIL  successes: none of {self.client.requests} requests succeeded "
                "(see locust_failures.csv in the report folder)"
            )
        if not self.consistent:
            failed.append(
                f"FAIL  consistency: Locust successes {self.client_successes} vs Triton "
                f"successes {self.server.successes:.0f} differ by more than "
                f"{self.consistency_allowance:.0f} (a request in flight per user + "
                f"{CONSISTENCY:.0%})"
            )
        if self.locust_exit_code:
            failed.append(f"FAIL  locust exited with code {self.locust_exit_code}")
        return failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.test).items()},
            "passed": self.passed,
            "seconds": self.seconds,
            "client": {**asdict(self.client), "failure_ratio": self.client.failure_ratio},
            "server": self.server.to_dict(),
            "server_source": self.server_source,
            "server_direct": self.direct.to_dict(),
            "gates": [asdict(g) for g in self.gates],
            "consistent": self.consistent,
            "ramp": self.ramp,
        }


def run_load_test(test: LoadTest) -> LoadTestResult:
    """Run `test`, write its report folder, and return the result (check `.passed`).

    Both sources of server figures read the same window, the run's own: Triton's counters when
    nothing is in flight just before Locust starts and after it stops, and Prometheus' once it
    has scraped those very counts (so earlier traffic, a `verify` for one, never counts).
    """
    from tritonize.loadtest.report import write_report

    slo = Slo.from_file(test.slo_file, test.scenario) if test.slo_file else Slo()
    if test.scenario == "ramp":  # its latency objectives find the knee; they gate no run
        slo = replace(slo, p95_ms=None, p99_ms=None)
    try:
        test.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError(f"`--out` {test.out}: cannot create it ({exc.strerror})") from exc
    prometheus = PrometheusSource(test.prometheus_url) if test.prometheus_url else None
    steps = ensemble_steps(test)
    models = (test.model, *steps)
    engine = test.engine_model or _engine_step(steps)
    before = quiet_reading(test.metrics, models)
    first = prometheus.reading_matching(before, models) if prometheus else None
    for stale in (FINAL_STATS, VERSIONS_CSV):  # an earlier run's
        (test.out / stale).unlink(missing_ok=True)
    sampler = _PendingSampler(test.metrics, models)
    start = time.time()
    with sampler:
        code = _run_locust(test)
    end = time.time()
    after = quiet_reading(test.metrics, models)

    # A streamed generation is one E2E request (its TTFT and ITL events are parts of it).
    row = "E2E" if test.streams else None
    client = load_client_figures(_client_stats(test.out), row)
    # Rates over the time Locust had users running (start-up and shutdown excluded).
    seconds = client.requests / client.rps if client.rps else end - start
    direct = figures(before, after, seconds, test.model, engine, steps)
    direct = _with(direct, max_pending=sampler.peak)
    server, source = direct, f"Triton's /metrics ({test.metrics})"
    if prometheus and first is not None:
        last = prometheus.reading_matching(after, models)
        server = figures(first, last, seconds, test.model, engine, steps)
        server = _with(server, max_pending=prometheus.max_pending(list(models), start, end))
        source = f"Prometheus ({test.prometheus_url})"

    ramp_file = test.out / "ramp.json"
    result = LoadTestResult(
        test=test,
        seconds=seconds,
        client=client,
        server=server,
        server_source=source,
        gates=evaluate(slo, client, server, _not_applicable(test, engine)),
        direct=direct,
        ramp=json.loads(ramp_file.read_text()) if ramp_file.exists() else None,
        locust_exit_code=code,
    )
    write_report(result, test.out)
    return result


def _client_stats(out: Path) -> Path:
    """Locust's final stats; its periodic `_stats.csv` when a crash left none."""
    final = out / FINAL_STATS
    return final if final.exists() else out / "locust_stats.csv"


def _not_applicable(test: LoadTest, engine: str | None) -> dict[str, str]:
    """SLO criteria that mean nothing for `test.model`, with the reason."""
    if engine is None:
        return {"min_batch_size": f"`{test.model}` has no engine step whose batches to count"}
    return {}


def _check_texts_file(path: Path) -> None:
    """A readable file with at least one text: else no request could be sent."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecError(f"`--texts-file` {path}: cannot read it ({reason})") from exc
    if not any(line.strip() for line in lines):
        raise SpecError(f"`--texts-file` {path}: holds no text (one text per line)")


def _engine_step(steps: tuple[str, ...]) -> str | None:
    """The ensemble's engine step (`NAME_engine.vN`), whose batching the report shows."""
    return next((s for s in steps if build_of(s)[0].endswith("_engine")), None)


def ensemble_steps(test: LoadTest) -> tuple[str, ...]:
    """The step models of `test.model` if it is an ensemble (from its served config)."""
    from tritonize.client import TritonizeClient

    with TritonizeClient(test.url, client_protocol(test.protocol)) as client:
        config = client.config(test.model)
        _check_protocol_fits(test, client.is_generation_model(test.model))
    scheduling = config.get("ensemble_scheduling") or config.get("ensembleScheduling") or {}
    return tuple(step.get("model_name") or step["modelName"] for step in scheduling.get("step", []))


def _check_protocol_fits(test: LoadTest, generation: bool) -> None:
    """Generation models stream (`sse`, `openai`, `openai-chat`); the others answer whole
    (`http`, `grpc`)."""
    if test.streams and not generation:
        raise SpecError(
            f"`{test.model}` is not a generation model: load it with --protocol http or grpc"
        )
    if not test.streams and generation:
        raise SpecError(
            f"`{test.model}` is a generation model: load it with --protocol sse, openai or "
            "openai-chat"
        )


def _with(server: ServerFigures, **changes: Any) -> ServerFigures:
    return replace(server, **changes)


def _locust_args(test: LoadTest) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE),
        "--triton-model", test.model,
        "--texts-per-request", str(test.texts_per_request),
        "--max-tokens", str(test.max_tokens),
        *(["--texts-file", str(test.texts_file)] if test.texts_file else []),
    ]  # fmt: skip


def _run_locust(test: LoadTest) -> int:
    """Locust headless (local, or a master and workers on loopback); returns its exit code."""
    env = {**os.environ, "TRITONIZE_SCENARIO": test.scenario}
    env.pop("LOCUST_SKIP_MONKEY_PATCH", None)  # Locust's users need gevent's patching
    user_class = USER_CLASSES[test.protocol]
    prefix = test.out / "locust"
    master = [
        *_locust_args(test), "--headless", "--host", test.target,
        "--scenario-users", str(test.users), "--scenario-seconds", str(test.seconds),
        "--step-seconds", str(test.step_seconds),
        "--ramp-report", str(test.out / "ramp.json"),
        "--final-stats", str(test.out / FINAL_STATS),
        "--versions-csv", str(test.out / VERSIONS_CSV),
        "--csv", str(prefix), "--csv-full-history", "--html", f"{prefix}.html",
        "--exit-code-on-error", "0",  # failures are judged by the SLO gates
        "--stop-timeout", "10",
    ]  # fmt: skip
    if test.scenario == "ramp" and test.slo_file:
        ramp = Slo.from_file(test.slo_file, "ramp")
        if ramp.p95_ms is not None:
            master += ["--ramp-p95-ms", str(ramp.p95_ms)]
        if ramp.max_failure_ratio is not None:
            master += ["--ramp-max-failure-ratio", str(ramp.max_failure_ratio)]
    workers: list[subprocess.Popen[bytes]] = []
    if test.workers:
        (port,) = free_ports(1)
        master += ["--master", "--expect-workers", str(test.workers),
                   "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port)]  # fmt: skip
        worker = [*_locust_args(test), "--worker", "--master-host", "127.0.0.1",
                  "--master-port", str(port), user_class]  # fmt: skip
        workers = [subprocess.Popen(worker, env=env) for _ in range(test.workers)]
    try:
        return subprocess.run([*master, user_class], env=env, check=False).returncode
    finally:
        for process in workers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


class _PendingSampler:
    """Samples Triton's pending requests of `models` (summed) once a second during the run."""

    def __init__(self, metrics_url: str, models: tuple[str, ...]) -> None:
        self.metrics_url, self.models = metrics_url, models
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                reading = read(self.metrics_url)
                value = sum(reading.total(PENDING, model) for model in self.models)
            except TritonizeError:
                continue
            self.peak = value if self.peak is None else max(self.peak, value)

    def __enter__(self) -> _PendingSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
