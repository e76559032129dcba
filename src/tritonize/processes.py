"""Child processes (tritonserver, Prometheus) that stop cleanly and die with their parent."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess


def die_with_parent() -> None:
    """`preexec_fn`: ask Linux to SIGTERM the child when its parent dies (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
    if process.poll() is not None:
        return process.returncode
    process.terminate()
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
