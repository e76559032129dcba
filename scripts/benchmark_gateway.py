#!/usr/bin/env python
"""What the OpenAI-compatible gateway costs (a benchmark, not a test).

Builds the tiny generation model (scripts/tiny_generation_model.py; or takes a checkpoint),
serves it on the local tritonserver, starts `tritonize gateway` in front of it, and streams
the same prompts at N concurrent streams two ways: through the gateway (/v1/completions,
`stream: true` with `include_usage`, over HTTP) and straight to Triton over gRPC (one
`stream_infer` per request, as the gateway itself calls it). Rounds alternate in the order
G D D G G D ... so that drift and noise hit both; a warm-up round of each is not counted.
Prints output tokens/s and time to first token (p50, p95) for each way, their ratio overall and
per pair of rounds (the spread shows the noise of a shared machine), and the CPU time that the
gateway process spent per output token it relayed.

    .venv/bin/python scripts/benchmark_gateway.py [--streams 16] [--rounds 4] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aio

from tritonize.client import generation_input
from tritonize.processes import free_ports
from tritonize.repository.writer import build_repository
from tritonize.server import LocalServer, ServerConfig
from tritonize.spec import BuildSpec, Task

MODEL = "bench"
PROMPTS = [
    "Once upon a time", "The quick brown fox", "Triton serves transformers",
    "A dynamic batcher waits", "Streams carry text", "Numbers like 1, 2, 3",
    "The dog does not mind", "A small model learned",
]  # fmt: skip

# One stream: (output tokens, seconds to the first text).
Stream = Callable[[str], Awaitable[tuple[int, float]]]


@dataclass
class Figures:
    """What one way did over all its counted rounds."""

    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # each round's tokens/s

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def percentile(self, share: float) -> float:
        ordered = sorted(self.ttft)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000

    def add(self, other: Figures) -> None:
        self.tokens += other.tokens
        self.seconds += other.seconds
        self.ttft += other.ttft
        self.rates.append(other.rate)


def checkpoint(given: Path | None, tmp: Path) -> Path:
    if given is not None:
        return given
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_generation_model import write_checkpoint

    return write_checkpoint("llama", tmp / "tiny-llama", seed=0)


def fields(prompt: str, max_tokens: int) -> dict[str, Any]:
    """The generator's fields, as the gateway sends them for a completion."""
    return {"text_input": prompt, "max_tokens": max_tokens, "stream": True}


def direct_stream(client: aio.InferenceServerClient, max_tokens: int) -> Stream:
    async def one(prompt: str) -> tuple[int, float]:
        inputs = [generation_input(grpcclient, k, v) for k, v in fields(prompt, max_tokens).items()]

        async def requests() -> Any:
            yield {"model_name": MODEL, "inputs": inputs}

        start, first, tokens = time.perf_counter(), None, 0
        async for result, error in client.stream_infer(requests()):
            if error is not None:
                raise RuntimeError(error)
            response = result.get_response()
            if response.outputs:
                if first is None and result.as_numpy("text_output").reshape(-1)[0]:
                    first = time.perf_counter() - start
                tokens = int(result.as_numpy("num_output_tokens").reshape(-1)[0])
            if response.parameters["triton_final_response"].bool_param:
                break
        return tokens, first if first is not None else time.perf_counter() - start

    return one


def gateway_stream(session: aiohttp.ClientSession, url: str, max_tokens: int) -> Stream:
    async def one(prompt: str) -> tuple[int, float]:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        start, first, tokens = time.perf_counter(), None, 0
        async with session.post(f"{url}/v1/completions", json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                    first = time.perf_counter() - start
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return tokens, first if first is not None else time.perf_counter() - start

    return one


async def round_of(stream: Stream, streams: int, seconds: float) -> Figures:
    """`streams` workers, each streaming prompt after prompt until `seconds` have passed; the
    round lasts until the last stream ends."""
    start = time.perf_counter()
    deadline = start + seconds
    figures = Figures()

    async def worker(index: int) -> None:
        turn = index
        while time.perf_counter() < deadline:
            tokens, ttft = await stream(PROMPTS[turn % len(PROMPTS)])
            figures.tokens += tokens
            figures.ttft.append(ttft)
            turn += 1

    await asyncio.gather(*(worker(i) for i in range(streams)))
    figures.seconds = time.perf_counter() - start
    return figures


async def compare(
    args: argparse.Namespace, grpc_url: str, gateway_url: str, gateway: psutil.Process
) -> tuple[dict[str, Figures], float]:
    """Each way's figures, and the gateway's CPU seconds over the counted rounds."""
    client = aio.InferenceServerClient(grpc_url)
    connector = aiohttp.TCPConnector(limit=args.streams)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        ways = {
            "gateway": gateway_stream(session, gateway_url, args.max_tokens),
            "direct": direct_stream(client, args.max_tokens),
        }
        for name, stream in ways.items():
            warm = await round_of(stream, args.streams, args.warmup_seconds)
            print(f"warm-up  {name:8} {warm.rate:8.0f} tokens/s (not counted)", flush=True)
        totals = {name: Figures() for name in ways}
        cpu_before = gateway.cpu_times()
        for index in range(args.rounds):
            order = ("gateway", "direct") if index % 2 == 0 else ("direct", "gateway")
            for name in order:
                figures = await round_of(ways[name], args.streams, args.round_seconds)
                totals[name].add(figures)
                print(
                    f"round {index + 1}/{args.rounds} {name:8} {figures.rate:8.0f} tokens/s, "
                    f"{len(figures.ttft)} streams, TTFT p50 {figures.percentile(0.5):.1f} ms",
                    flush=True,
                )
        cpu_after = gateway.cpu_times()
    await client.close()
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    return totals, cpu


def wait_for_gateway(url: str, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/v1/models/{MODEL}", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start") from None
            time.sleep(0.2)


def report(totals: dict[str, Figures], gateway_cpu_s: float, args: argparse.Namespace) -> None:
    gateway, direct = totals["gateway"], totals["direct"]
    print(f"\n{args.streams} concurrent streams, max_tokens {args.max_tokens}, "
          f"{args.rounds} rounds of {args.round_seconds:g} s per way\n")  # fmt: skip
    print("| way | output tokens/s | streams | TTFT p50 (ms) | TTFT p95 (ms) |")
    print("|---|---|---|---|---|")
    for name, figures in (("gateway (HTTP, SSE)", gateway), ("Triton gRPC direct", direct)):
        print(f"| {name} | {figures.rate:.0f} | {len(figures.ttft)} | "
              f"{figures.percentile(0.5):.1f} | {figures.percentile(0.95):.1f} |")  # fmt: skip
    ratio = gateway.rate / direct.rate
    print(f"\ngateway / direct tokens/s: {ratio:.3f} ({(1 - ratio) * 100:+.1f}% lost); "
          f"TTFT p50 +{gateway.percentile(0.5) - direct.percentile(0.5):.1f} ms, "
          f"p95 +{gateway.percentile(0.95) - direct.percentile(0.95):.1f} ms")  # fmt: skip
    pairs = sorted(g / d for g, d in zip(gateway.rates, direct.rates, strict=True) if d)
    print("per pair of rounds: " + ", ".join(f"{ratio:.3f}" for ratio in pairs)
          + f" (median {statistics.median(pairs):.3f})")  # fmt: skip
    print(f"gateway CPU: {gateway_cpu_s:.2f} s for {gateway.tokens} tokens, "
          f"{gateway_cpu_s / gateway.tokens * 1e6:.0f} us per output token")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a decoder checkpoint (default: tiny)")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=4, help="counted rounds per way")
    parser.add_argument("--round-seconds", type=float, default=8.0)
    parser.add_argument("--warmup-seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = checkpoint(args.checkpoint, Path(tmp))
        repo = Path(tmp) / "repo"
        print("building the model repository", flush=True)
        build_repository(BuildSpec(name=MODEL, task=Task.GENERATION, model=model, output=repo,
                                   max_seq_len=256, max_batch_size=args.streams))  # fmt: skip
        http, grpc, metrics, gateway_port = free_ports(4)
        config = ServerConfig(repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                              log_file=Path(tmp) / "triton.log")  # fmt: skip
        print("starting tritonserver and the gateway", flush=True)
        with LocalServer(config):
            gateway_url = f"http://127.0.0.1:{gateway_port}"
            command = [sys.executable, "-m", "tritonize.cli", "gateway", "--triton",
                       config.grpc_url, "--port", str(gateway_port)]  # fmt: skip
            gateway = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            try:
                wait_for_gateway(gateway_url, gateway)
                process = psutil.Process(gateway.pid)
                totals, cpu = asyncio.run(compare(args, config.grpc_url, gateway_url, process))
            finally:
                gateway.terminate()
                gateway.wait(timeout=30)
    report(totals, cpu, args)


if __name__ == "__main__":
    main()
