"""Prometheus: a local server scraping the local Triton, and readings queried from any server."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tritonize.errors import TritonizeError
from tritonize.monitor.figures import COUNTERS, PENDING, Reading, Sample
from tritonize.processes import die_with_parent, stop_process

MONITORING_DIR = Path(__file__).resolve().parents[3] / "monitoring"
RULE_FILES = ("alerts.yml", "drift.yml")  # as monitoring/prometheus.yml loads them


class PrometheusSource:
    """Readings of Triton's counters from a Prometheus server, at any past moment."""

    def __init__(self, url: str) -> None:
        from prometheus_api_client import PrometheusConnect

        self.url = url
        self.client = PrometheusConnect(url=url, disable_ssl=True)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; `at` is a Unix time (default: now)."""
        params = {"time": f"{at:.3f}"} if at is not None else None
        try:
            return list(self.client.custom_query(promql, params=params))
        except Exception as exc:  # the client raises its own and requests' errors
            shown = promql if len(promql) <= 80 else f"{promql[:77]}..."
            raise TritonizeError(f"Prometheus at {self.url} failed on `{shown}`: {exc}") from exc

    def reading_at(self, at: float, models: list[str]) -> Reading:
        """Every counter `figures()` needs, for `models`, as Prometheus had them at `at`."""
        names = "|".join(COUNTERS)
        selector = f'{{__name__=~"{names}",model=~"{"|".join(models)}"}}'
        return Reading(
            Sample(r["metric"]["__name__"], r["metric"], float(r["value"][1]))
            for r in self.query(selector, at)
        )

    def reading_matching(
        self, direct: Reading, models: tuple[str, ...], timeout_s: float = 20.0
    ) -> Reading:
        """Prometheus' reading once it has scraped the request counts of `direct`.

        `direct` is a reading taken straight from Triton while nothing was in flight, so the
        counts stand still until Prometheus' next scrape brings them: from then on both sources
        describe the same moment, whatever the scrape interval or a late scrape on a busy host.
        """
        from tritonize.monitor.scrape import request_counts

        wanted = request_counts(direct, models)
        deadline = time.monotonic() + timeout_s
        while True:
            reading = self.reading_at(time.time(), list(models))
            if request_counts(reading, models) == wanted:
                return reading
            if time.monotonic() > deadline:
                raise TritonizeError(
                    f"Prometheus at {self.url} did not scrape Triton's current counters of "
                    f"{', '.join(models)} within {timeout_s:.0f} s: is it scraping this Triton?"
                )
            time.sleep(0.25)

    def max_pending(self, models: list[str], start: float, end: float) -> float | None:
        """The most requests pending in `models` (summed) at any second of the window."""
        window = max(1, round(end - start))
        selector = f'{PENDING}{{model=~"{"|".join(models)}"}}'
        promql = f"max_over_time(sum({selector})[{window}s:1s])"
        result = self.query(promql, end)
        return float(result[0]["value"][1]) if result else None


class LocalPrometheus:
    """A Prometheus process on loopback that scrapes a local Triton every second."""

    def __init__(
        self,
        metrics_target: str,
        port: int = 9090,
        host: str = "127.0.0.1",
        jobs: dict[str, str] | None = None,
    ) -> None:
        self.metrics_target = metrics_target  # host:port of Triton's metrics endpoint
        self.jobs = dict(jobs or {})  # more scrape jobs: name -> host:port (prober, gateway)
        self.host, self.port = host, port
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="tritonize-prometheus-"))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def config(self) -> dict[str, Any]:
        rules = [MONITORING_DIR / name for name in RULE_FILES]
        return {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rules if path.exists()],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in {"triton": self.metrics_target, **self.jobs}.items()
            ],
        }

    def start(self, timeout_s: float = 30.0) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise TritonizeError(
                "`prometheus` is not installed: `apt-get install prometheus` (Debian/Ubuntu) "
                "or use the compose `monitoring` profile"
            )
        config = self._dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        with (self._dir / "prometheus.log").open("wb") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--web.listen-address={self.host}:{self.port}",
                 f"--storage.tsdb.path={self._dir / 'data'}", "--storage.tsdb.retention.time=1d"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonizeError(
                    f"prometheus exited: {(self._dir / 'prometheus.log').read_text()[-2000:]}"
                )
            if self._scraping():
                return
            time.sleep(0.2)
        self.stop()
        raise TritonizeError(
            f"prometheus did not scrape {self.metrics_target} within {timeout_s:.0f} s"
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalPrometheus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _scraping(self) -> bool:
        """Ready and holding a first sample of Triton (the first scrape comes a few s late)."""
        query = urllib.parse.urlencode({"query": 'up{job="triton"} == 1'})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=1) as response:
                return bool(json.loads(response.read())["data"]["result"])
        except (OSError, ValueError, KeyError):
            return False
