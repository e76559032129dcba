"""Read Triton's Prometheus endpoint directly (no Prometheus server needed)."""

from __future__ import annotations

import time
import urllib.request

from tritonize.errors import TritonizeError
from tritonize.monitor.figures import PENDING, Reading

METRICS_URL_HINT = (
    "set Triton's metrics endpoint with --metrics-url or the TRITONIZE_METRICS_URL environment "
    "variable (the default is port 8002 on --url's host)"
)
# The request counters that move when a request ends: equal in two readings, nothing ended.
REQUEST_COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_exec_count",
)


def default_metrics_url(server_url: str) -> str:
    """Triton's metrics endpoint on the host of `server_url` (HOST:PORT), default port 8002."""
    host = server_url.split("://")[-1].rsplit(":", 1)[0]
    return f"http://{host}:8002/metrics"


def scrape(url: str, timeout_s: float = 5.0) -> str:
    """The text exposition served at `url` (e.g. http://127.0.0.1:8002/metrics)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return str(response.read().decode())
    except (OSError, ValueError) as exc:  # ValueError: not a URL at all
        raise TritonizeError(f"cannot scrape metrics at {url}: {exc}; {METRICS_URL_HINT}") from exc


def read(url: str) -> Reading:
    """Triton's metrics now, parsed."""
    return Reading.from_text(scrape(url))


def model_value(url: str, metric: str, model: str) -> float:
    """One model's current value of `metric`, summed over its series (0 without any)."""
    return read(url).total(metric, model)


def request_counts(reading: Reading, models: tuple[str, ...]) -> tuple[float, ...]:
    """The request counters of `models` in `reading`, for comparing two readings."""
    return tuple(reading.total(name, model) for model in models for name in REQUEST_COUNTERS)


def quiet_reading(
    url: str, models: tuple[str, ...], timeout_s: float = 30.0, interval_s: float = 0.3
) -> Reading:
    """Triton's counters at a moment when nothing is in flight in `models`.

    Quiet means no request pending and the request counters unchanged since the previous
    reading: Triton counts a request when it releases it, a moment after the client has its
    answer. Under traffic from elsewhere that never ends, the reading after `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    previous = read(url)
    while True:
        time.sleep(interval_s)
        current = read(url)
        idle = all(current.total(PENDING, model) == 0 for model in models)
        if idle and request_counts(current, models) == request_counts(previous, models):
            return current
        if time.monotonic() > deadline:
            return current
        previous = current
