"""`tritonize diagnose`: gather what a person would look at into one folder, and name each
problem found with its runbook section.

The parts are gathered one by one and each failure to gather one is written down as a gap,
so an unreachable server still leaves the host, shared memory, the log and the alerts behind.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from tritonize.client import host_port
from tritonize.diagnose import host, processes, triton
from tritonize.diagnose import repository as disk
from tritonize.diagnose.folder import Folder
from tritonize.diagnose.problems import Gap, Problem, alert_anchor
from tritonize.diagnose.report import Diagnosis, Options
from tritonize.diagnose.triton import Refused, TritonHttp, Unreachable
from tritonize.errors import TritonizeError
from tritonize.monitor.figures import PENDING, Reading
from tritonize.monitor.scrape import default_metrics_url, scrape
from tritonize.server.private import private_root

FAILURE = "nv_inference_request_failure"
# Parts that need the server, then parts gathered whatever its state, in this order.
SERVER_PARTS = ("models", "readiness", "configs", "metrics", "statistics", "stubs", "probes",
                "verify")  # fmt: skip
LOCAL_PARTS = ("manifests", "log", "shm", "host", "alerts")
_DEAD_STUB = re.compile(r"Stub process '(?P<instance>[^']+?)_\d+_\d+' is not healthy")


def diagnose(options: Options) -> Diagnosis:
    """Gather every part into `options.out`, then write the summary there."""
    investigation = Investigation(options)
    investigation.run()
    result = investigation.result
    result.folder.write_json(
        "summary.json",
        {"exit_code": result.exit_code, "reachable": result.reachable,
         "problems": [p.to_dict() for p in result.problems],
         "gaps": [vars(gap) for gap in result.gaps], "files": result.folder.files},
    )  # fmt: skip
    result.folder.write_text("summary.txt", result.summary() + "\n")
    return result


class Investigation:
    """One diagnose run: each `_part` method writes its files and records what it found."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.result = Diagnosis(Folder(options.out))
        self.http = TritonHttp(options.url, options.api_key, options.timeout_s)
        self.process = processes.server_on_port(_port(options.url))
        self.repository = options.repository or (self.process.repository if self.process else None)
        self.states: dict[str, dict[str, str]] = {}  # model -> {"state", "reason"}
        self.configs: dict[str, dict[str, Any]] = {}  # loaded configs of READY models
        self.server_ready = False

    @property
    def ready_models(self) -> list[str]:
        return sorted(m for m, s in self.states.items() if s.get("state") == "READY")

    def run(self) -> None:
        self._part("process", self._process)
        self._part("server", self._server)
        parts = (*(SERVER_PARTS if self.result.reachable else ()), *LOCAL_PARTS)
        for name in parts:
            self._part(name, getattr(self, f"_{name}"))

    def _part(self, name: str, gather: Any) -> None:
        """Gather one part; whatever stops it is written down, and the next part runs."""
        try:
            gather()
        except (TritonizeError, OSError, ValueError, KeyError) as exc:
            self.gap(name, f"{type(exc).__name__}: {exc}")

    def problem(self, kind: str, subject: str, detail: str, anchor: str = "") -> None:
        self.result.add(Problem(kind, subject, detail, anchor))

    def gap(self, part: str, reason: str) -> None:
        self.result.gaps.append(Gap(part, reason))

    # -- the server ----------------------------------------------------------------------------
    def _process(self) -> None:
        found = self.process.to_dict() if self.process else None
        self.result.folder.write_json("process.json", {
            "server": found,
            "note": None if found else "no tritonserver serving this HTTP port runs on this host "
            "(or its command line cannot be read): stubs and the default log are not known",
        })  # fmt: skip

    def _server(self) -> None:
        facts: dict[str, Any] = {"url": self.options.url}
        try:
            facts["live"] = self.http.status("/v2/health/live") == 200
        except Unreachable as exc:
            self.result.reachable = False
            facts["error"] = str(exc)
            self.problem("server-unreachable", self.options.url, str(exc))
            self.result.folder.write_json("server.json", facts)
            return
        facts["ready"] = self.http.status("/v2/health/ready") == 200
        facts["metadata"] = self.http.get("/v2")
        self.result.folder.write_json("server.json", facts)
        self.server_ready = facts["live"] and facts["ready"]

    def _models(self) -> None:
        index = self._index()
        for entry in index:
            name, loaded = entry["name"], entry.get("state", "")
            # Never loaded (a build waiting on disk for a rollout), or one version of a model
            # whose other version serves: neither is a problem of its own.
            if not loaded or self.states.get(name, {}).get("state") == "READY":
                continue
            self.states[name] = {"state": loaded, "reason": entry.get("reason", "")}
            self.states[name]["ready"] = str(triton.is_model_ready(self.http, name))
        self.result.folder.write_json("models.json", self.states)
        for name, state in sorted(self.states.items()):
            if state["state"] not in ("READY", "LOADING") and state["reason"] != "unloaded":
                why = state["reason"] or "no reason given"
                self.problem("model-unavailable", name, f"{state['state']}: {why}")

    def _readiness(self) -> None:
        if self.server_ready:
            return
        detail = "/v2/health/ready fails (under strict readiness every model must be READY)"
        down = [f"{m} ({(s['reason'].splitlines() or [s['state']])[0]})"
                for m, s in sorted(self.states.items())
                if s["state"] != "READY"]  # fmt: skip
        if down:
            detail += f"; not READY: {', '.join(down)}"
        elif self.states:
            detail += (
                "; every model in the index is READY, so the cause is a model that failed to "
                "load or was unloaded since the server started: Triton counts it until it "
                "loads again or the server restarts"
            )
        self.problem("server-not-ready", self.options.url, detail)

    def _index(self) -> list[dict[str, str]]:
        """Triton's repository index (it needs the key), else the models on disk, asked one
        by one (then no reason is known)."""
        try:
            return triton.repository_index(self.http)
        except Refused as exc:
            self.gap("repository index", f"{exc} (the index needs the admin key: --api-key)")
        if self.repository is None:
            raise TritonizeError("no model list: pass --api-key, or --repository DIR")
        names = sorted(p.parent.name for p in self.repository.glob("*/config.pbtxt"))
        return [
            {"name": n, "state": "READY" if triton.is_model_ready(self.http, n) else "UNAVAILABLE"}
            for n in names
        ]

    def _configs(self) -> None:
        differences: dict[str, list[str] | str] = {}
        for model in self.ready_models:
            self.configs[model] = triton.model_config(self.http, model)
            self.result.folder.write_json(f"configs/{model}.loaded.json", self.configs[model])
            if self.repository is not None:
                differences[model] = self._compare_config(model)
        if self.repository is None:
            self.gap("on-disk configs", "no repository known: pass --repository DIR")
        self.result.folder.write_json("config-differences.json", differences)

    def _compare_config(self, model: str) -> list[str] | str:
        assert self.repository is not None
        on_disk = disk.disk_config(self.repository, model)
        if isinstance(on_disk, str):
            self.problem("config-mismatch", model, on_disk)
            return on_disk
        found = disk.config_differences(on_disk, disk.loaded_config(self.configs[model]))
        if found:
            self.problem("config-mismatch", model,
                         f"{len(found)} field(s) differ: {'; '.join(found)}")  # fmt: skip
        return found

    # -- traffic -------------------------------------------------------------------------------
    @property
    def metrics_url(self) -> str:
        if self.options.metrics_url:
            return self.options.metrics_url
        if self.process is not None:
            host = host_port(self.options.url).rsplit(":", 1)[0]
            return f"http://{host}:{self.process.metrics_port}/metrics"
        return default_metrics_url(self.options.url)

    def _metrics(self) -> None:
        """Two scrapes `sample_s` apart: what is pending, and what failed in between."""
        try:
            first = scrape(self.metrics_url)
            time.sleep(self.options.sample_s)
            second = scrape(self.metrics_url)
        except TritonizeError as exc:
            self.problem("metrics-unreachable", self.metrics_url, str(exc))
            return
        self.result.folder.write_text("metrics-before.txt", first)
        self.result.folder.write_text("metrics-after.txt", second)
        before, after = Reading.from_text(first), Reading.from_text(second)
        figures = {model: self._traffic(model, before, after) for model in self.ready_models}
        self.result.folder.write_json("metrics.json", figures)

    def _traffic(self, model: str, before: Reading, after: Reading) -> dict[str, float]:
        bound = triton.queue_bound(self.configs.get(model, {}))
        pending = max(before.total(PENDING, model), after.total(PENDING, model))
        failed = after.total(FAILURE, model) - before.total(FAILURE, model)
        limit = bound or self.options.pending_limit
        if pending >= limit:
            what = f"max_queue_size {bound}" if bound else f"the limit {limit} (--pending-limit)"
            self.problem("queue-saturated", model,
                         f"{pending:.0f} requests pending, at or over {what}; "
                         "requests beyond max_queue_size are refused")  # fmt: skip
        if failed > 0:
            self.problem(
                "requests-failing",
                model,
                f"{failed:.0f} request(s) failed in {self.options.sample_s:.0f} s",
            )
        return {"pending": pending, "max_queue_size": bound, "failed_in_window": failed}

    def _statistics(self) -> None:
        if not self.options.api_key:
            self.gap("statistics", "the statistics API needs the admin key: --api-key")
            return
        self.result.folder.write_json("statistics.json", triton.statistics(self.http))

    # -- stubs and answers ---------------------------------------------------------------------
    def _stubs(self) -> None:
        """A READY Python model with fewer live stubs than instances lost one."""
        if self.process is None:
            self.gap("stubs", "the server does not run on this host: dead stubs are found by "
                     "their failing requests only")  # fmt: skip
            return
        stubs = processes.stubs_of(self.process)
        self.result.folder.write_json("stubs.json", [vars(stub) for stub in stubs])
        for model in self.ready_models:
            config = self.configs.get(model, {})
            if config.get("backend") != "python":
                continue
            live = sum(1 for stub in stubs if stub.model == model)
            expected = triton.instance_count(config)
            if live < expected:
                self.problem("stub-dead", model,
                             f"{live} of {expected} stub process(es) alive; Triton still says "
                             "READY, and requests to the model fail")  # fmt: skip

    def _probes(self) -> None:
        from tritonize.server.health import probe

        steps = {step for config in self.configs.values() for step in triton.step_models(config)}
        public = [model for model in self.ready_models if model not in steps]
        results = probe(self.options.url, public, timeout_s=self.options.timeout_s)
        self.result.folder.write_json("probes.json", [vars(result) for result in results])
        for result in results:
            if result.error is None:
                continue
            dead = _DEAD_STUB.search(result.error)
            if dead:
                self.problem("stub-dead", dead.group("instance"), result.error)
            else:
                self.problem("model-not-answering", result.model, result.error)

    def _verify(self) -> None:
        from tritonize.verify import Deployment, verify

        if self.options.verify_requests <= 0 or self.repository is None:
            reason = "--verify-requests 0" if self.repository else "no repository known"
            self.gap("verify", f"skipped ({reason})")
            return
        troubled = {problem.subject for problem in self.result.problems}
        reports = {}
        for model in self.ready_models:
            golden = self.repository / model / "golden.json"
            if not golden.is_file() or model in troubled:
                continue
            deployment = Deployment(self.options.url, model, golden,
                                    metrics_url=self.metrics_url,
                                    smoke_requests=self.options.verify_requests)  # fmt: skip
            checks = verify(deployment)
            reports[model] = [vars(check) for check in checks]
            failed = [check.describe() for check in checks if not check.passed]
            if failed:
                self.problem("verify-failed", model, "; ".join(failed))
        self.result.folder.write_json("verify.json", reports)

    # -- the host ------------------------------------------------------------------------------
    def _manifests(self) -> None:
        if self.repository is None:
            self.gap("manifests", "no repository known: pass --repository DIR")
            return
        pids = [stub.pid for stub in processes.stubs_of(self.process)] if self.process else []
        runtime, source = disk.serving_versions(pids)
        records: dict[str, Any] = {"runtime": runtime, "runtime_source": source, "versions": {}}
        for config in sorted(self.repository.glob("*/config.pbtxt")):
            for directory in disk.version_directories(self.repository, config.parent.name):
                self._manifest(directory, runtime, records["versions"])
        self.result.folder.write_json("manifests.json", records)

    def _manifest(self, directory: Path, runtime: dict[str, Any], records: dict[str, Any]) -> None:
        name = f"{directory.parent.name}/{directory.name}"
        record, mismatches, changed = disk.manifest_findings(directory, runtime)
        records[name] = {**record, "files_changed": changed}
        if mismatches:
            self.problem("version-mismatch", name, "; ".join(mismatches))
        if changed:
            self.problem("model-files-changed", name, "; ".join(changed))

    def _log(self) -> None:
        path = self._log_path()
        if path is None:
            self.gap("server log", "not found: pass --log-file")
            return
        lines = path.read_text(errors="replace").splitlines()
        tail = lines[-self.options.log_lines :]
        self.result.folder.write_text("server-log-tail.txt", f"# {path}\n" + "\n".join(tail) + "\n")
        errors = [line for line in lines if line.startswith("E") or "Stub process" in line]
        self.result.folder.write_text("server-log-errors.txt", "\n".join(errors[-100:]) + "\n")

    def _log_path(self) -> Path | None:
        """--log-file, else the running server's stdout, else serve's default log."""
        candidates = [self.options.log_file,
                      self.process.log_file if self.process else None,
                      private_root() / f"tritonserver-{_port(self.options.url)}.log"]  # fmt: skip
        return next((path for path in candidates if path is not None and path.is_file()), None)

    def _shm(self) -> None:
        scan = processes.scan_shm(processes.servers())
        self.result.folder.write_json("shm.json", [region.to_dict() for region in scan.regions])
        for prefix, regions in sorted(scan.leaked_by_prefix().items()):
            size = sum(region.size for region in regions)
            names = ", ".join(region.path.name for region in regions[:3])
            self.problem("shm-leaked", f"{processes.SHM_DIR}/{prefix}*",
                         f"{len(regions)} region(s), {size / 2**20:.1f} MiB, owned by no live "
                         f"tritonserver or stub: {names}")  # fmt: skip

    def _host(self) -> None:
        facts = host.host_facts()
        self.result.folder.write_json("host.json", facts)
        for problem in host.host_problems(facts):
            self.result.add(problem)

    def _alerts(self) -> None:
        if not self.options.prometheus:
            return
        from tritonize.monitor.prometheus import PrometheusSource

        try:
            firing = PrometheusSource(self.options.prometheus).query('ALERTS{alertstate="firing"}')
        except TritonizeError as exc:
            self.problem("prometheus-unreachable", self.options.prometheus, str(exc))
            return
        self.result.folder.write_json("alerts.json", [alert["metric"] for alert in firing])
        known = known_alerts()
        for alert in firing:
            labels = alert["metric"]
            name = labels.get("alertname", "?")
            about = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())
                              if k not in ("alertname", "alertstate", "__name__"))  # fmt: skip
            self.problem("alert-firing", f"{name} {about}".strip(),
                         f"alert {name} is firing", alert_anchor(name, known))  # fmt: skip


def known_alerts() -> frozenset[str]:
    """The alerts of the shipped rule files (each has its own runbook section)."""
    import yaml

    from tritonize.monitor.prometheus import MONITORING_DIR, RULE_FILES

    names = set()
    for name in RULE_FILES:
        try:
            rules = yaml.safe_load((MONITORING_DIR / name).read_text())
        except OSError:
            continue
        names |= {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    return frozenset(names)


def _port(url: str) -> int:
    address = host_port(url)
    try:
        return int(address.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 80
