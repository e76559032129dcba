#!/usr/bin/env python
"""What the live feature metrics cost (a benchmark, not a test).

Builds each model twice into one repository: `<task>_on` as built, and `<task>_off` with the
reference profile removed from its ensemble's version directory, so that its steps export no
`tritonize_feature_*` metrics (the manifest is sealed again, so the server accepts the edit).
Serves all of them on one local tritonserver and sends the same texts (the built-in reference
set) at both builds of a model over gRPC from N concurrent clients. Rounds alternate in the
order ON OFF OFF ON ON OFF ... so that drift and noise hit both; a warm-up round of each is not
counted. Prints requests/s, texts/s, latency p50/p95 for each build, the throughput cost of the
features overall and per pair of neighbouring rounds (median, min, max), and the CPU time per
request of tritonserver and of each step's backend stub (each build has stubs of its own), which
says where the features' time goes with less noise than throughput on a busy machine.

    .venv/bin/python scripts/benchmark_features.py [--clients 16] [--rounds 8] \
        [--round-seconds 10] [--tasks embedding classification]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aio

from tritonize.monitor.profile import builtin_reference_texts
from tritonize.monitor.scrape import read
from tritonize.processes import free_ports
from tritonize.repository.manifest import seal
from tritonize.repository.writer import build_repository
from tritonize.server import LocalServer, ServerConfig
from tritonize.spec import BuildSpec, Task, bundled_model_dir
from tritonize.triton_models.features import PROFILE

ON, OFF = "on", "off"
SERVER = "tritonserver"
FEATURE_COUNTER = "tritonize_feature_observations_total"
TINY_CLASSIFIER = Path(__file__).parents[1] / "tests" / "fixtures" / "tiny_configs"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


@dataclass
class Figures:
    """What one build did over one round, or over all its counted rounds."""

    requests: int = 0
    texts: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process (step)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def text_rate(self) -> float:
        return self.texts / self.seconds if self.seconds else 0.0

    def percentile_ms(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000

    def add(self, other: Figures) -> None:
        self.requests += other.requests
        self.texts += other.texts
        self.seconds += other.seconds
        self.latencies += other.latencies
        for process, seconds in other.cpu.items():
            self.cpu[process] = self.cpu.get(process, 0.0) + seconds

    def cpu_ms_per_request(self, process: str) -> float:
        return self.cpu.get(process, 0.0) / self.requests * 1000 if self.requests else 0.0


class CpuMeter:
    """CPU seconds used so far by tritonserver and by each step's backend stubs (by model:
    the stub's command line names the model.py it runs)."""

    def __init__(self, server_pid: int) -> None:
        self.server = psutil.Process(server_pid)

    def read(self) -> dict[str, float]:
        seconds = {SERVER: _cpu_seconds(self.server)}
        for child in self.server.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                scripts = [arg for arg in child.cmdline() if arg.endswith("/model.py")]
                if scripts:
                    model = Path(scripts[0]).parents[1].name
                    seconds[model] = seconds.get(model, 0.0) + _cpu_seconds(child)
        return seconds


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def tiny_classifier(directory: Path) -> Path:
    """The tests' tiny random BERT classifier (3 labels), with MiniLM's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    values = json.loads((TINY_CLASSIFIER / "bert-classifier.json").read_text())
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(**values))
    model.eval().save_pretrained(directory)
    for name in TOKENIZER_FILES:
        shutil.copy2(bundled_model_dir() / name, directory / name)
    return directory


def build_pair(task: str, repository: Path, checkpoint: Path | None) -> dict[str, str]:
    """Build `task` twice; remove the second build's profile. Returns {ON: name, OFF: name}."""
    names = {ON: f"{task}_{ON}", OFF: f"{task}_{OFF}"}
    for name in names.values():
        spec = BuildSpec(name=name, task=Task(task), model=checkpoint, output=repository)
        build_repository(spec)
    version = repository / names[OFF] / "1"
    (version / PROFILE).unlink()
    seal(version, owner=names[OFF])  # the manifest lists the profile: record its removal
    return names


def text_input(texts: list[str]) -> grpcclient.InferInput:
    data = np.array([[text.encode()] for text in texts], dtype=object)
    request = grpcclient.InferInput("TEXT", list(data.shape), "BYTES")
    request.set_data_from_numpy(data)
    return request


async def round_of(
    client: aio.InferenceServerClient,
    model: str,
    texts: list[str],
    args: argparse.Namespace,
    seconds: float,
) -> Figures:
    """`args.clients` workers, each sending request after request until `seconds` have
    passed; the round lasts until the last request ends."""
    figures = Figures()
    start = time.perf_counter()
    deadline = start + seconds
    size = args.texts_per_request

    async def worker(index: int) -> None:
        turn = index * 37  # workers start at different texts
        while time.perf_counter() < deadline:
            chosen = [texts[(turn * size + i) % len(texts)] for i in range(size)]
            sent = time.perf_counter()
            await client.infer(model, [text_input(chosen)])
            figures.latencies.append(time.perf_counter() - sent)
            figures.requests += 1
            figures.texts += size
            turn += 1

    await asyncio.gather(*(worker(i) for i in range(args.clients)))
    figures.seconds = time.perf_counter() - start
    return figures


async def measured_round(
    client: aio.InferenceServerClient,
    meter: CpuMeter,
    model: str,
    texts: list[str],
    args: argparse.Namespace,
    seconds: float,
) -> Figures:
    """A round, with the CPU that tritonserver and `model`'s own steps used meanwhile."""
    before = meter.read()
    figures = await round_of(client, model, texts, args, seconds)
    after = meter.read()
    figures.cpu = {
        process: used - before.get(process, 0.0)
        for process, used in after.items()
        if process == SERVER or process.startswith(f"{model}_")
    }
    return figures


def progress(label: str, figures: Figures) -> None:
    print(
        f"{label}: {figures.rate:7.1f} requests/s, p50 {figures.percentile_ms(0.5):6.1f} ms, "
        f"p95 {figures.percentile_ms(0.95):6.1f} ms",
        file=sys.stderr,
        flush=True,
    )


async def compare(
    url: str, meter: CpuMeter, names: dict[str, str], texts: list[str], args: argparse.Namespace
) -> tuple[dict[str, Figures], list[float]]:
    """Totals per build and each pair of neighbouring rounds' cost (%), in rounds
    ON OFF, OFF ON, ON OFF, ..."""
    client = aio.InferenceServerClient(url)
    try:
        for model in names.values():
            warm = await round_of(client, model, texts, args, args.warmup_seconds)
            progress(f"warm-up   {model:24}", warm)
        totals = {ON: Figures(), OFF: Figures()}
        costs = []
        for index in range(args.rounds):
            order = (ON, OFF) if index % 2 == 0 else (OFF, ON)
            pair = {}
            for arm in order:
                pair[arm] = await measured_round(
                    client, meter, names[arm], texts, args, args.seconds
                )
                totals[arm].add(pair[arm])
                progress(f"round {index + 1:2}/{args.rounds} {names[arm]:24}", pair[arm])
            costs.append(cost(pair[ON], pair[OFF]))
    finally:
        await client.close()
    return totals, costs


def cost(on: Figures, off: Figures) -> float:
    """The throughput the features take, in % of the throughput without them."""
    return (1 - on.rate / off.rate) * 100


def check_features_exported(metrics_url: str, names: dict[str, str]) -> None:
    """The ON build exported feature counts and the OFF build none: else the figures lie."""
    reading = read(metrics_url)
    on, off = (reading.total(FEATURE_COUNTER, names[arm]) for arm in (ON, OFF))
    if on <= 0 or off != 0:
        raise SystemExit(
            f"error: {FEATURE_COUNTER} is {on:g} for `{names[ON]}` and {off:g} for "
            f"`{names[OFF]}`: expected observations for the first and none for the second"
        )


def report(
    task: str, names: dict[str, str], totals: dict[str, Figures], costs: list[float]
) -> None:
    print(f"\n### {task}\n")
    print(
        "| build | requests/s | texts/s | p50 ms | p95 ms | requests |\n|---|---|---|---|---|---|"
    )
    for arm in (ON, OFF):
        f = totals[arm]
        print(
            f"| {names[arm]} (features {arm}) | {f.rate:.1f} | {f.text_rate:.1f} | "
            f"{f.percentile_ms(0.5):.1f} | {f.percentile_ms(0.95):.1f} | {f.requests} |"
        )
    print(
        f"\nthroughput cost of the features: {cost(totals[ON], totals[OFF]):+.2f}% overall; "
        f"per pair of rounds median {statistics.median(costs):+.2f}%, "
        f"min {min(costs):+.2f}%, max {max(costs):+.2f}% ({len(costs)} pairs)"
    )
    report_cpu(names, totals)


def report_cpu(names: dict[str, str], totals: dict[str, Figures]) -> None:
    """CPU milliseconds per request in each step: where the features' time goes."""
    steps = sorted({p.removeprefix(f"{names[arm]}_") for arm in (ON, OFF) for p in totals[arm].cpu})
    print("\n| CPU ms per request | " + " | ".join(steps) + " | all |")
    print("|---" * (len(steps) + 2) + "|")
    for arm in (ON, OFF):
        figures = totals[arm]
        per_step = [
            figures.cpu_ms_per_request(s if s == SERVER else f"{names[arm]}_{s}") for s in steps
        ]
        cells = " | ".join(f"{ms:.3f}" for ms in per_step)
        print(f"| features {arm} | {cells} | {sum(per_step):.3f} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent requests")
    parser.add_argument("--rounds", type=int, default=8, help="counted rounds of each build")
    parser.add_argument("--round-seconds", dest="seconds", type=float, default=10.0)
    parser.add_argument("--warmup-seconds", type=float, default=5.0)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument(
        "--tasks", nargs="+", choices=("embedding", "classification"),
        default=["embedding", "classification"],
        help="embedding: the bundled MiniLM; classification: a tiny random BERT classifier",
    )  # fmt: skip
    args = parser.parse_args()
    if min(args.clients, args.rounds, args.texts_per_request) < 1 or args.seconds <= 0:
        parser.error("--clients, --rounds, --texts-per-request and --round-seconds must be > 0")
    return args


def main() -> None:
    args = parse_args()
    texts = builtin_reference_texts()
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repository"
        checkpoints: dict[str, Path | None] = {"embedding": None}  # None: the bundled MiniLM
        if "classification" in args.tasks:
            checkpoints["classification"] = tiny_classifier(Path(tmp) / "classifier")
        pairs = {task: build_pair(task, repository, checkpoints[task]) for task in args.tasks}
        http, grpc, metrics = free_ports(3)
        config = ServerConfig(repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                              log_file=Path(tmp) / "tritonserver.log")  # fmt: skip
        results = {}
        with LocalServer(config) as server:
            for task, names in pairs.items():
                assert server.process is not None
                meter = CpuMeter(server.process.pid)
                results[task] = asyncio.run(compare(config.grpc_url, meter, names, texts, args))
                check_features_exported(server.config.metrics_url, names)
    print(
        f"\n{args.clients} concurrent clients over gRPC, {args.texts_per_request} text(s) per "
        f"request, {args.rounds} rounds of {args.seconds:g} s per build"
    )
    for task, (totals, costs) in results.items():
        report(task, pairs[task], totals, costs)


if __name__ == "__main__":
    main()
