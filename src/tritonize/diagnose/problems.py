"""What `diagnose` can find wrong, each kind with its section of docs/runbook.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RUNBOOK = "docs/runbook.md"

# Every kind of problem diagnose reports (the runbook has a section named after each).
KINDS = {
    "server-unreachable": "Triton's HTTP endpoint does not answer at all",
    "server-not-ready": "Triton answers but says it is not ready",
    "model-unavailable": "a model in the repository is not loaded (failed to load)",
    "stub-dead": "a Python-backend stub of a loaded model is gone: the model is READY, "
    "its requests fail",
    "model-not-answering": "a loaded model fails a real tiny request",
    "queue-saturated": "requests pile up in a model's queue (at max_queue_size or the limit)",
    "requests-failing": "Triton's failure counter grew while diagnose watched",
    "config-mismatch": "the configuration Triton serves differs from config.pbtxt on disk",
    "version-mismatch": "the serving Python has other package versions than the build had",
    "model-files-changed": "files of a version directory differ from its manifest",
    "verify-failed": "`tritonize verify` fails against the model's golden file",
    "shm-leaked": "Python-backend shared-memory regions that no live server owns",
    "shm-space-low": "/dev/shm is nearly full: the Python backend cannot grow its regions",
    "host-memory-low": "the host has little memory available",
    "metrics-unreachable": "Triton's metrics endpoint cannot be scraped",
    "prometheus-unreachable": "the Prometheus given with --prometheus cannot be queried",
    "alert-firing": "an alert that the runbook has no section of its own for is firing",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong: its kind, what it concerns (a model, a region, ...) and the evidence."""

    kind: str
    subject: str
    detail: str
    anchor: str = ""  # runbook section; the kind's own when empty

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown problem kind `{self.kind}`; known: {', '.join(KINDS)}")

    @property
    def runbook(self) -> str:
        return f"{RUNBOOK}#{self.anchor or self.kind}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "anchor": self.anchor or self.kind, "runbook": self.runbook}

    def describe(self, width: int = 160) -> str:
        """Two lines: the kind, subject and the first line of the evidence; the runbook link."""
        first = (self.detail.strip().splitlines() or [""])[0]
        if len(first) > width:
            first = first[: width - 3] + "..."
        return f"  [{self.kind}] {self.subject}: {first}\n      see {self.runbook}"


@dataclass(frozen=True)
class Gap:
    """Something diagnose could not gather, and why (not itself a problem of the server)."""

    part: str
    reason: str


def alert_anchor(alertname: str, known_alerts: frozenset[str]) -> str:
    """The runbook section of a firing alert: its own (its name lowercased) for the shipped
    rules' alerts, the generic one for any other."""
    return alertname.lower() if alertname in known_alerts else "alert-firing"
