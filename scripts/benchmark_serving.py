#!/usr/bin/env python
"""Serving figures for the bundled MiniLM on this machine (a benchmark, not a test).

Prints: build time, server ready time, one-sentence latency over HTTP and gRPC (p50/p95),
throughput and achieved engine batch size under N concurrent clients, and the peak RSS of
tritonserver with its Python stubs.

    .venv/bin/python scripts/benchmark_serving.py [--clients 16] [--requests 300]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from tritonize.client import TritonizeClient
from tritonize.monitor.scrape import read
from tritonize.repository.writer import build_repository
from tritonize.server import LocalServer, ServerConfig
from tritonize.spec import BuildSpec

SENTENCE = "Triton serves transformer models behind HTTP and gRPC."
WORDS = SENTENCE.split() * 3


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sequential_latency(url: str, protocol: str, requests: int) -> list[float]:
    with TritonizeClient(url, protocol) as client:
        for _ in range(20):
            client.embed("minilm", [SENTENCE])
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            client.embed("minilm", [SENTENCE])
            times.append((time.perf_counter() - start) * 1e3)
    return times


class PeakRss:
    """Samples the RSS of a process and its children until stopped."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            procs = [self.root, *self.root.children(recursive=True)]
            rss = 0
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    rss += proc.memory_info().rss
            self.peak = max(self.peak, rss)
            time.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def concurrent_load(server: LocalServer, clients: int, per_client: int) -> tuple[float, float]:
    """(requests per second, achieved engine batch size) for single-sentence requests."""

    def one_client(index: int) -> None:
        with TritonizeClient(server.config.grpc_url, "grpc") as client:
            for i in range(per_client):
                client.embed("minilm", [" ".join(WORDS[: 1 + (index + i) % len(WORDS)])])

    def engine() -> tuple[float, float]:
        reading = read(server.config.metrics_url)
        return (
            reading.total("nv_inference_count", "minilm_engine"),
            reading.total("nv_inference_exec_count", "minilm_engine"),
        )

    count0, exec0 = engine()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one_client, range(clients)))
    elapsed = time.perf_counter() - start
    count1, exec1 = engine()
    return clients * per_client / elapsed, (count1 - count0) / (exec1 - exec0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--requests", type=int, default=300, help="sequential requests per protocol"
    )
    parser.add_argument("--per-client", type=int, default=40)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build_repository(BuildSpec(name="minilm", task="embedding", output=Path(tmp)))
        build_s = time.perf_counter() - start

        http, grpc, metrics = free_ports(3)
        config = ServerConfig(Path(tmp), http_port=http, grpc_port=grpc, metrics_port=metrics)
        with LocalServer(config) as server:
            assert server.process is not None
            with PeakRss(server.process.pid) as rss:
                latency = {
                    "http": sequential_latency(config.http_url, "http", args.requests),
                    "grpc": sequential_latency(config.grpc_url, "grpc", args.requests),
                }
                throughput, batch = concurrent_load(server, args.clients, args.per_client)

    print("\n| figure | value |\n|---|---|")
    print(f"| build (export + validate + write) | {build_s:.1f} s |")
    print(f"| server ready | {server.ready_after_s:.1f} s |")
    for protocol, times in latency.items():
        print(
            f"| one sentence over {protocol}, p50 / p95 | "
            f"{statistics.median(times):.1f} / {percentile(times, 0.95):.1f} ms |"
        )
    print(f"| {args.clients} concurrent clients: throughput | {throughput:.0f} requests/s |")
    print(f"| {args.clients} concurrent clients: achieved engine batch | {batch:.1f} |")
    print(f"| peak RSS, tritonserver + stubs | {rss.peak / 2**20:.0f} MiB |")


if __name__ == "__main__":
    main()
