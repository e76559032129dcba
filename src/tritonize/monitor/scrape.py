"""Read Triton's Prometheus endpoint directly (no Prometheus server needed)."""

from __future__ import annotations

import urllib.request

from tritonize.errors import TritonizeError
from tritonize.monitor.figures import Reading


def default_metrics_url(server_url: str) -> str:
    """Triton's metrics endpoint on the host of `server_url` (HOST:PORT), default port 8002."""
    host = server_url.split("://")[-1].rsplit(":", 1)[0]
    return f"http://{host}:8002/metrics"


def scrape(url: str, timeout_s: float = 5.0) -> str:
    """The text exposition served at `url` (e.g. http://127.0.0.1:8002/metrics)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return str(response.read().decode())
    except OSError as exc:
        raise TritonizeError(f"cannot scrape metrics at {url}: {exc}") from exc


def read(url: str) -> Reading:
    """Triton's metrics now, parsed."""
    return Reading.from_text(scrape(url))


def model_value(url: str, metric: str, model: str) -> float:
    """One model's current value of `metric`, summed over its series (0 without any)."""
    return read(url).total(metric, model)
