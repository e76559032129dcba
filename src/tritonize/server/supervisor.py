"""Keep a tritonserver serving: heal dead stubs, restart a dead server, drain on stop.

Triton 2.51 keeps a model READY after its Python-backend stub died, and fails every later
request with "Stub process ... is not healthy"; a plain load does not restart a decoupled
model's stub. The supervisor watches the stubs of its own run (found by the run's shm prefix),
and when one dies while Triton still counts its model as loaded, it unloads then loads that
model (its ensembles go and come back with it).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tritonize.errors import ServerError
from tritonize.repository.checker import check_repository
from tritonize.server import leftovers
from tritonize.server.admin import READY, RepositoryAdmin
from tritonize.server.local import LocalServer

Log = Callable[[str], None]
# Seconds tritonserver gets to exit after a complete drain.
EXIT_GRACE_S = 3.0


@dataclass
class Backoff:
    """1, 2, 4 ... `ceiling` seconds; back to the start after a run that lasted `reset_after_s`."""

    ceiling_s: float = 30.0
    reset_after_s: float = 60.0
    _next_s: float = field(default=1.0, init=False)

    def delay(self, uptime_s: float) -> float:
        if uptime_s >= self.reset_after_s:
            self._next_s = 1.0
        delay, self._next_s = self._next_s, min(self._next_s * 2, self.ceiling_s)
        return delay


class Supervisor:
    """Run `server` until asked to stop; `run()` returns the exit code for `serve`."""

    def __init__(
        self,
        server: LocalServer,
        log: Log = print,
        poll_s: float = 0.25,
        drain_timeout_s: float = 30.0,
        ready_timeout_s: float = 180.0,
    ) -> None:
        self.server = server
        self.log = log
        self.poll_s = poll_s
        self.drain_timeout_s = drain_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.admin = RepositoryAdmin(
            server.config.http_url, server.config.api_key, grpc_url=server.config.grpc_url
        )
        self.backoff = Backoff()
        self._stop = threading.Event()
        self._stop_signal: int | None = None
        self._stubs: dict[str, leftovers.Stub] = {}
        configs = check_repository(server.config.repository)
        self._steps = {s.model_name for c in configs.values() for s in c.ensemble_scheduling.step}

    def request_stop(self, signum: int, _frame: object = None) -> None:
        """Signal handler: only sets a flag (the loop drains)."""
        self._stop_signal = signum
        self._stop.set()

    def run(self) -> int:
        self._stubs = self._current_stubs()
        while not self._stop.is_set():
            if self.server.process is not None and self.server.process.poll() is not None:
                self._restart()
                continue
            self._heal_dead_stubs()
            self._stop.wait(self.poll_s)
        return self.drain()

    # -- stubs --------------------------------------------------------------------------------
    def _current_stubs(self) -> dict[str, leftovers.Stub]:
        """The stubs of model instances. While it loads a model, Triton also runs a stub named
        after the model itself and ends it: that one's end is no death."""
        stubs = leftovers.find_stubs(self.server.shm_prefix)
        return {s.instance: s for s in stubs if s.instance != s.model}

    def _heal_dead_stubs(self) -> None:
        current = self._current_stubs()
        # A stub replaced under the same instance name (a reload) is not a death.
        gone = [s for name, s in self._stubs.items() if name not in current]
        self._stubs = current
        if not gone:
            return
        try:
            states = self.admin.states()
        except ServerError:  # the server itself is going: the restart path handles it
            return
        dead = [s for s in gone if states.get(s.model) == READY and self._expected(s)]
        healed = []
        for model in sorted({s.model for s in dead}):
            started = time.monotonic()
            survivors = [s for s in current.values() if s.model == model]
            if self._reload(model, [s for s in dead if s.model == model], states):
                healed.append((model, started))
            # The reloaded model's old instances never finish unloading beside a dead one:
            # their stubs would live on unused. New requests go to the new instances.
            leftovers.kill_stubs(survivors)
            gone += survivors
        leftovers.remove_regions([leftovers.SHM_DIR / s.region for s in gone])
        self._stubs = self._current_stubs()
        # Said once nothing of the old instances is left: stubs and regions alike.
        for model, started in healed:
            self.log(f"model `{model}`: serving again after {time.monotonic() - started:.1f} s")

    def _expected(self, stub: leftovers.Stub) -> bool:
        """Whether the model's loaded config still has `stub`'s instance. A load with fewer
        instances (`tritonize tune`, an operator's config override) ends the others' stubs:
        no death, and reloading the files' config would undo the override."""
        try:
            return stub.instance in self.admin.instances(stub.model)
        except ServerError:  # no config to ask: count it as a death, as before
            return True

    def _reload(self, model: str, dead: list[leftovers.Stub], before: dict[str, str]) -> bool:
        """Unload then load `model`, and load any ensemble that was ready and did not return;
        whether that worked."""
        names = ", ".join(f"{s.instance} (pid {s.pid})" for s in dead)
        self.log(f"model `{model}`: stub {names} died; reloading it")
        try:
            # No waiting for the unload: an instance whose stub died never finishes unloading
            # in Triton 2.51, and the load does not need it gone.
            self.admin.unload(model)
            self.admin.load(model)
            after = self.admin.states()
            for other in sorted(m for m, s in before.items() if s == READY):
                if after.get(other) != READY:
                    self.admin.load(other)
        except ServerError as exc:
            self.log(f"model `{model}`: reload failed: {exc}")
            return False
        return True

    # -- the server ---------------------------------------------------------------------------
    def _restart(self) -> None:
        process = self.server.process
        assert process is not None
        uptime = time.perf_counter() - self.server.started_at
        stubs, regions = self.server.clean_up()
        delay = self.backoff.delay(uptime)
        self.log(
            f"tritonserver exited with {_describe(process.returncode)} after {uptime:.0f} s; "
            f"removed {stubs} stub process(es) and {regions} shared-memory region(s); "
            f"restarting in {delay:.0f} s"
        )
        if self._stop.wait(delay):
            self.server.process = None
            return
        try:
            self.server.launch()
            self.server.wait_ready(self.ready_timeout_s)
        except ServerError as exc:
            self.log(f"restart failed: {exc}")
            return
        self.log(f"tritonserver is back: ready in {self.server.ready_after_s:.1f} s")
        self._stubs = self._current_stubs()

    def drain(self) -> int:
        """Refuse new work, let in-flight requests finish, stop the server, leave nothing."""
        if self._stop_signal is not None:
            self.log(f"stopping ({signal.Signals(self._stop_signal).name}): draining ...")
        started = time.monotonic()
        still_busy = self._unload_everything() if self._server_running() else []
        # Drained, only idle connections remain; but an instance whose stub died never finishes
        # unloading in Triton 2.51 and holds the exit for the whole exit timeout: cut it short.
        grace = self.server.config.exit_timeout_s + 5 if still_busy else EXIT_GRACE_S
        code = self.server.stop(timeout_s=grace)
        took = time.monotonic() - started
        if still_busy:
            self.log(f"stopped after {took:.1f} s; not drained in time: {', '.join(still_busy)}")
            return 1
        self.log(f"drained and stopped in {took:.1f} s (tritonserver: {_describe(code)})")
        return 0

    def _server_running(self) -> bool:
        return self.server.process is not None and self.server.process.poll() is None

    def _unload_everything(self) -> list[str]:
        """Public models first (new requests are refused), then their steps; wait for each."""
        try:
            loaded = [m for m, state in self.admin.states().items() if state != "UNAVAILABLE"]
            public = [m for m in loaded if m not in self._steps]
            for stage in (public, [m for m in loaded if m in self._steps]):
                for model in stage:
                    self.admin.unload(model)
                busy = self.admin.wait_until_idle(stage, self.drain_timeout_s)
                if busy:
                    return busy
        except ServerError as exc:
            self.log(f"drain: {exc}")
        return []


def _describe(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"
