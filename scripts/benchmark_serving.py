#!/usr/bin/env python
"""Served embeddings against the in-process ceiling and peer servers, side by side in one run
(a benchmark, not a test).

For one build (by default the bundled MiniLM, built into a temporary repository): the served
ensemble over HTTP and gRPC at each concurrency (one sentence per request, closed-loop clients,
warm-up excluded), and the peers under the same load (the seed's Flask + PyTorch server;
infinity-emb where installed). Each window of a system follows a window of the in-process
ceiling (the build's own tokenizer.json + model.onnx in ONNX Runtime at batch 32, every core),
so each ratio compares two windows seconds apart on this noisy machine; `--rounds` pairs each.
Printed: sentences/s, ratio to the ceiling (median and range), p50/p99, the achieved engine
batch, and CPU time per sentence by process (Triton, each step's stubs, the load generator).

    .venv/bin/python scripts/benchmark_serving.py [--concurrency 1 16 64] [--rounds 3]
        [--seconds 8] [--repository DIR --name NAME] [--peers flask infinity] [--json OUT]
        [--batches 4 8 16] [--texts sentences|varied]
        [--infinity-python /path/to/venv/bin/python]

infinity-emb pins other transformers, tokenizers and sentence-transformers releases than
tritonize, so it goes into an environment of its own:

    python3.11 -m venv /tmp/infinity && /tmp/infinity/bin/pip install torch==2.13.0 \
        "infinity-emb[server,torch]==0.0.78"
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tritonize.bench.ceiling import (
    InProcessEncoder,
    default_threads,
    one_at_a_time,
    sentences_per_second,
)
from tritonize.bench.cpu import TRITON, cpu_seconds, spent
from tritonize.bench.load import (
    GrpcTarget,
    HttpTarget,
    LoadResult,
    run_load,
    triton_grpc_target,
    triton_http_target,
)
from tritonize.cli import number_type, positive_seconds, whole_number
from tritonize.monitor.figures import figures as server_figures
from tritonize.monitor.profile import builtin_reference_texts
from tritonize.monitor.scrape import read
from tritonize.processes import free_ports
from tritonize.repository.configs import from_text
from tritonize.repository.writer import build_repository
from tritonize.server import LocalServer, ServerConfig
from tritonize.spec import BuildSpec, Task, bundled_model_dir
from tritonize.tasks.build import StepNames

PEERS = Path(__file__).parent / "peers"


def benchmark_texts(kind: str, count: int = 256) -> list[str]:
    """The texts every system is sent, one per request: `sentences` (about 10-20 tokens
    each) or `varied` (one to five sentences, 10-72 tokens, mean 32: what batches of mixed
    lengths cost)."""
    if kind == "varied":
        return builtin_reference_texts(count, seed=1)
    return sentences(count)


def sentences(count: int) -> list[str]:
    """Single sentences (about 10-20 tokens each)."""
    pool: list[str] = []
    for text in builtin_reference_texts(400, seed=11):
        for part in re.split(r"(?<=[.?!])\s+", text):
            part = part.split(": ", 1)[-1]
            if len(part.split()) >= 5 and part not in pool:
                pool.append(part)
    return (pool * (count // len(pool) + 1))[:count]


@dataclass
class Row:
    """One system at one concurrency over all rounds; each round's ceiling was measured
    just before it, so every ratio compares two windows a few seconds apart."""

    system: str
    concurrency: int
    loads: list[LoadResult] = field(default_factory=list)
    ceilings: list[float] = field(default_factory=list)
    batch: float | None = None
    cpu_ms: dict[str, float] | None = None  # per sentence, by process

    @property
    def per_second(self) -> float:
        return statistics.median(load.per_second for load in self.loads)

    @property
    def ratios(self) -> list[float]:
        return sorted(
            load.per_second / ceiling
            for load, ceiling in zip(self.loads, self.ceilings, strict=True)
        )

    def percentile_ms(self, q: float) -> float:
        latencies = np.concatenate([load.latencies for load in self.loads])
        return float(np.percentile(latencies, q) * 1e3) if len(latencies) else float("nan")

    @property
    def failures(self) -> int:
        return sum(load.failures for load in self.loads)


class SideBySide:
    """Runs each system's window right after a window of the in-process ceiling."""

    def __init__(self, encoder: InProcessEncoder, texts: list[str], args: argparse.Namespace):
        self.encoder, self.texts, self.args = encoder, texts, args

    def measure(self, row: Row, target: HttpTarget | GrpcTarget) -> Row:
        args = self.args
        for _ in range(args.rounds):
            row.ceilings.append(
                sentences_per_second(self.encoder, self.texts, 32, args.seconds, args.warmup)
            )
            row.loads.append(run_load(target, row.concurrency, args.seconds, args.warmup))
        ratios = ", ".join(f"{r:.2f}" for r in row.ratios)
        print(
            f"   {row.system} c{row.concurrency}: {row.per_second:.0f}/s, / ceiling {ratios}",
            flush=True,
        )
        errors = [error for load in row.loads for error in load.errors]
        if errors:  # counted in the table; here is why
            print(f"   {row.failures} failed, first: {errors[0]}", flush=True)
        return row

    def batch_ratios(self, batches: list[int]) -> dict[int, list[float]]:
        """In-process rate at each batch size over batch 32's, each window after one of
        batch 32: what the engine alone loses at the batches a server achieves."""
        if not batches:
            return {}
        print("-> In-process, smaller batches against batch 32 ...", flush=True)
        args = self.args
        ratios: dict[int, list[float]] = {batch: [] for batch in batches}
        for _ in range(args.rounds):
            for batch in batches:
                full = sentences_per_second(self.encoder, self.texts, 32, args.seconds, args.warmup)
                rate = sentences_per_second(
                    self.encoder, self.texts, batch, args.seconds, args.warmup
                )
                ratios[batch].append(rate / full)
        for batch in batches:
            print(f"   batch {batch}: / batch 32 {_spread(ratios[batch])}", flush=True)
        return ratios


def _spread(values: list[float]) -> str:
    """`median (lowest-highest)`, to two decimals."""
    ordered = sorted(values)
    return f"{statistics.median(ordered):.2f} ({ordered[0]:.2f}-{ordered[-1]:.2f})"


def measure_served(server: LocalServer, name: str, bench: SideBySide) -> list[Row]:
    steps = StepNames(name, 1)
    config = server.config
    targets: dict[str, HttpTarget | GrpcTarget] = {
        "http": triton_http_target("127.0.0.1", config.http_port, name, bench.texts),
        "grpc": triton_grpc_target(f"127.0.0.1:{config.grpc_port}", name, bench.texts),
    }
    rows = []
    for protocol in bench.args.protocols:
        for concurrency in bench.args.concurrency:
            before, cpu_before = read(config.metrics_url), cpu_seconds(server)
            row = bench.measure(Row(f"served {protocol}", concurrency), targets[protocol])
            used = spent(cpu_before, cpu_seconds(server))  # the ceiling runs in this process
            # Readings span warm-ups and windows alike: per request answered, both.
            engine = server_figures(
                before, read(config.metrics_url), 1.0, steps.engine, steps.engine
            )
            answered = engine.successes
            row.batch = engine.achieved_batch_size
            row.cpu_ms = {group: 1e3 * s / max(answered, 1) for group, s in used.items()}
            client_s = sum(load.client_cpu_s for load in row.loads)
            row.cpu_ms["load generator"] = 1e3 * client_s / max(answered, 1)
            rows.append(row)
    return rows


@contextlib.contextmanager
def peer_server(command: list[str], port: int, ready_path: str) -> Iterator[None]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read().decode()[-2000:])  # type: ignore[union-attr]
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2)
                break
            time.sleep(0.5)
        yield
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        process.kill()


def peer(
    name: str, model: Path, port: int, infinity_python: str
) -> tuple[list[str], str, Callable[[str], dict]]:
    """How to start a peer, where it takes one sentence, and the JSON body for one."""
    if name == "flask":
        command = [sys.executable, str(PEERS / "flask_pytorch.py"), str(model), str(port)]
        return command, "/embed", lambda text: {"text": text}
    if name == "infinity":
        command = [
            infinity_python, "-m", "infinity_emb.cli", "v2", "--model-id", str(model),
            "--engine", "torch", "--batch-size", "32", "--port", str(port),
        ]  # fmt: skip
        return command, "/embeddings", lambda text: {"model": str(model), "input": [text]}
    raise SystemExit(f"--peers: unknown peer {name!r} (flask, infinity)")


def measure_peers(model: Path, bench: SideBySide) -> list[Row]:
    rows = []
    for name in bench.args.peers:
        python = bench.args.infinity_python
        if name == "infinity" and not _has_module(python, "infinity_emb"):
            print(f"   infinity-emb: not importable by {python} (--infinity-python), skipped")
            continue
        (port,) = free_ports(1)
        command, path, body = peer(name, model, port, python)
        bodies = [json.dumps(body(text)).encode() for text in bench.texts]
        target = HttpTarget("127.0.0.1", port, path, bodies)
        try:
            with peer_server(command, port, "/health"):
                for concurrency in bench.args.concurrency:
                    rows.append(bench.measure(Row(name, concurrency), target))
        except RuntimeError as exc:
            print(f"   {name}: did not start: {exc}")
    return rows


def _has_module(python: str, module: str) -> bool:
    if python == sys.executable:
        return importlib.util.find_spec(module) is not None
    found = subprocess.run([python, "-c", f"import {module}"], capture_output=True, check=False)
    return found.returncode == 0


def open_encoder(repository: Path, steps: StepNames) -> InProcessEncoder:
    """The build's own tokenizer.json and model.onnx, ONNX Runtime's default threads."""
    config = from_text((repository / steps.tokenizer / "config.pbtxt").read_text())
    return InProcessEncoder(
        repository / steps.tokenizer / "1" / "tokenizer.json",
        repository / steps.engine / "1" / "model.onnx",
        int(config.parameters["max_seq_len"].string_value),
        default_threads(),
    )


def print_table(single: np.ndarray, rows: list[Row]) -> None:
    print("\n| system | clients | sentences/s | / ceiling (median; range) | p50 ms | p99 ms "
          "| engine batch | failed |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    p50, p99 = (float(np.percentile(single, q) * 1e3) for q in (50, 99))
    print(f"| in-process, one sentence at a time | 1 | {1 / np.mean(single):.0f} | - "
          f"| {p50:.1f} | {p99:.1f} | 1 | - |")  # fmt: skip
    for row in rows:
        batch = f"{row.batch:.1f}" if row.batch is not None else "-"
        print(
            f"| {row.system} | {row.concurrency} | {row.per_second:.0f} | {_spread(row.ratios)} "
            f"| {row.percentile_ms(50):.1f} | {row.percentile_ms(99):.1f} | {batch} "
            f"| {row.failures} |"
        )
    served = [row for row in rows if row.cpu_ms]
    if not served:
        return
    groups = sorted({g for row in served for g in row.cpu_ms or {}}, key=lambda g: g != TRITON)
    print("\nCPU time per sentence (ms), by process:\n")
    print("| system | clients | " + " | ".join(groups) + " | total |")
    print("|---|---:|" + "---:|" * (len(groups) + 1))
    for row in served:
        cells = [(row.cpu_ms or {}).get(g, 0.0) for g in groups]
        print(
            f"| {row.system} | {row.concurrency} | "
            + " | ".join(f"{c:.2f}" for c in cells)
            + f" | {sum(cells):.2f} |"
        )


def figures(single: np.ndarray, rows: list[Row], batch_ratios: dict[int, list[float]]) -> dict:
    return {
        "one_sentence_in_process_ms": {
            "p50": float(np.percentile(single, 50) * 1e3),
            "p99": float(np.percentile(single, 99) * 1e3),
        },
        "in_process_batch_ratios_to_32": batch_ratios,
        "rows": [
            {
                "system": r.system, "concurrency": r.concurrency,
                "sentences_per_s": r.per_second, "ratios_to_ceiling": r.ratios,
                "ceilings": r.ceilings, "p50_ms": r.percentile_ms(50),
                "p99_ms": r.percentile_ms(99), "failed": r.failures,
                "engine_batch": r.batch, "cpu_ms": r.cpu_ms,
            }
            for r in rows
        ],
    }  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=whole_number(1), nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--protocols", nargs="+", choices=["http", "grpc"], default=["http", "grpc"]
    )
    parser.add_argument(
        "--seconds", type=positive_seconds, default=8.0, help="measured window per round"
    )
    parser.add_argument(
        "--warmup", type=number_type(lambda v: v >= 0, "seconds >= 0"), default=2.0,
        help="unmeasured seconds first",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=whole_number(1), default=3, help="ceiling + system windows each"
    )
    parser.add_argument(
        "--batches", type=whole_number(1), nargs="*", default=[],
        help="also time the in-process encoder at these batch sizes against batch 32",
    )  # fmt: skip
    parser.add_argument("--repository", type=Path, help="an existing repository (default: build)")
    parser.add_argument("--name", default="minilm", help="the embedding model to load")
    parser.add_argument("--model", type=Path, help="checkpoint for peers (default: bundled)")
    parser.add_argument(
        "--peers", nargs="*", choices=["flask", "infinity"], default=["flask", "infinity"]
    )
    parser.add_argument(
        "--infinity-python", default=sys.executable,
        help="a Python with infinity-emb installed: it pins other transformers and tokenizers "
        "than tritonize, so it lives in an environment of its own (default: this one)",
    )  # fmt: skip
    parser.add_argument(
        "--texts", choices=["sentences", "varied"], default="sentences",
        help="one sentence per request, or texts of mixed lengths",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.repository is not None:
        tokenizer = args.repository / StepNames(args.name, 1).tokenizer / "config.pbtxt"
        if not tokenizer.is_file():
            parser.error(
                f"--repository {args.repository}: no build 1 of `{args.name}` in it "
                f"({tokenizer} is missing; --name names the embedding model)"
            )
    return args


def main() -> None:
    args = parse_args()

    texts = benchmark_texts(args.texts)
    with tempfile.TemporaryDirectory() as tmp:
        repository = args.repository or Path(tmp)
        if args.repository is None:
            print("-> Building the bundled MiniLM ...", flush=True)
            build_repository(BuildSpec(name=args.name, task=Task.EMBEDDING, output=repository))
        encoder = open_encoder(repository, StepNames(args.name, 1))
        bench = SideBySide(encoder, texts, args)
        print(f"-> In-process, one sentence at a time ({default_threads()} threads) ...")
        single = one_at_a_time(encoder, texts, args.seconds)
        batch_ratios = bench.batch_ratios(args.batches)

        print("-> Served, each round after one of the in-process ceiling (batch 32) ...")
        ports = free_ports(3)
        config = ServerConfig(
            repository, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
            log_file=Path(tmp) / "tritonserver.log",
        )  # fmt: skip
        with LocalServer(config) as server:
            rows = measure_served(server, args.name, bench)
        print("-> Peers ...", flush=True)
        rows += measure_peers(args.model or bundled_model_dir(), bench)

    print_table(single, rows)
    if args.json:
        args.json.write_text(json.dumps(figures(single, rows, batch_ratios), indent=2))


if __name__ == "__main__":
    main()
