"""CPU time of a running tritonserver, split by process: Triton itself (HTTP and gRPC
front-ends, the ensemble scheduler, the batchers) and each Python-backend stub (one per model
instance, named by its model)."""

from __future__ import annotations

import contextlib
from collections import defaultdict

import psutil

from tritonize.server import LocalServer
from tritonize.server.leftovers import find_stubs

TRITON = "tritonserver"


def cpu_seconds(server: LocalServer) -> dict[str, float]:
    """User + system CPU seconds so far: tritonserver, then each model's stubs summed."""
    assert server.process is not None, "the server is not running"
    pids: dict[str, list[int]] = defaultdict(list)
    pids[TRITON].append(server.process.pid)
    for stub in find_stubs(server.shm_prefix):
        pids[stub.model].append(stub.pid)
    totals: dict[str, float] = {}
    for name, members in pids.items():
        totals[name] = 0.0
        for pid in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = psutil.Process(pid).cpu_times()
                totals[name] += times.user + times.system
    return totals


def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds spent by each process group between two readings."""
    return {name: after[name] - before.get(name, 0.0) for name in after}
