"""The host's CPU, memory, /dev/shm space and GPUs (nvidia-smi, where present)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tritonize.diagnose.problems import Problem
from tritonize.server.leftovers import SHM_DIR

# Below these shares of free memory or free /dev/shm, say so.
LOW_MEMORY_SHARE = 0.10
LOW_SHM_SHARE = 0.10
NVIDIA_SMI_QUERY = (
    "index,name,driver_version,memory.total,memory.used,utilization.gpu,temperature.gpu"
)


def host_facts() -> dict[str, Any]:
    """CPU count and load, memory, /dev/shm space and GPUs of this host."""
    return {
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "memory": memory(),
        "shm": shm_space(),
        "gpus": gpus(),
    }


def memory(meminfo: Path = Path("/proc/meminfo")) -> dict[str, int]:
    """MemTotal, MemAvailable, SwapTotal, SwapFree in bytes."""
    wanted = {"MemTotal", "MemAvailable", "SwapTotal", "SwapFree"}
    facts = {}
    try:
        lines = meminfo.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        name, _, value = line.partition(":")
        if name in wanted:
            facts[name] = int(value.split()[0]) * 1024  # /proc/meminfo counts kB
    return facts


def shm_space(shm_dir: Path = SHM_DIR) -> dict[str, int]:
    try:
        usage = shutil.disk_usage(shm_dir)
    except OSError:
        return {}
    return {"total": usage.total, "free": usage.free}


def gpus() -> dict[str, Any]:
    """nvidia-smi's view of the GPUs, or why there is none."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return {"present": False, "note": "no nvidia-smi on PATH"}
    command = [binary, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"present": False, "note": f"nvidia-smi failed: {exc}"}
    if result.returncode != 0:
        return {"present": False, "note": f"nvidia-smi: {result.stderr.strip() or result.stdout}"}
    fields = NVIDIA_SMI_QUERY.split(",")
    rows = [line.split(", ") for line in result.stdout.strip().splitlines()]
    return {"present": bool(rows), "gpus": [dict(zip(fields, row, strict=False)) for row in rows]}


def host_problems(facts: dict[str, Any]) -> list[Problem]:
    problems = []
    mem = facts.get("memory", {})
    if mem.get("MemTotal") and mem.get("MemAvailable", 0) < LOW_MEMORY_SHARE * mem["MemTotal"]:
        problems.append(
            Problem("host-memory-low", "host",
                    f"{_gib(mem['MemAvailable'])} of {_gib(mem['MemTotal'])} available")
        )  # fmt: skip
    shm = facts.get("shm", {})
    if shm.get("total") and shm["free"] < LOW_SHM_SHARE * shm["total"]:
        problems.append(
            Problem("shm-space-low", str(SHM_DIR),
                    f"{_gib(shm['free'])} free of {_gib(shm['total'])}")
        )  # fmt: skip
    return problems


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"
