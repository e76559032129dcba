#!/usr/bin/env python
"""Generation throughput and latency (a benchmark, not a test).

Builds a random Llama-shaped model (about 20M parameters plus embeddings) with the bundled
MiniLM's tokenizer, serves it on the local tritonserver and streams from it at 1, 4 and 16
concurrent clients over gRPC. The baseline is Hugging Face `generate`, one request at a time,
in-process, on the same model and prompts. Prints output tokens/s (with the ratio to the
baseline), time to first token and inter-token latency (p50/p95).

    .venv/bin/python scripts/benchmark_generation.py [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import queue
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import torch
import tritonclient.grpc as grpcclient

from tritonize.client import generation_input
from tritonize.processes import free_ports
from tritonize.repository.writer import build_repository
from tritonize.server import LocalServer, ServerConfig
from tritonize.spec import BuildSpec, Task, bundled_model_dir

PROMPTS = [f"Request {i}: tell me about serving language models with batching" for i in range(16)]


def make_model(directory: Path) -> Path:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy2(bundled_model_dir() / name, directory / name)
    config = LlamaConfig(
        vocab_size=30522, hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256,
        eos_token_id=102, bos_token_id=101,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(directory)
    GenerationConfig(eos_token_id=102, bos_token_id=101, pad_token_id=0).save_pretrained(directory)
    return directory


def hf_baseline(directory: Path, max_tokens: int) -> tuple[float, list[float]]:
    """(output tokens/s, per-token latencies) of `generate` one request at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tokens, start, per_token = 0, time.perf_counter(), []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        ids.pop("token_type_ids", None)
        begin = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
        new = out.shape[1] - ids["input_ids"].shape[1]
        tokens += new
        per_token.append((time.perf_counter() - begin) / max(new, 1))
    return tokens / (time.perf_counter() - start), per_token


def stream_one(url: str, prompt: str, max_tokens: int) -> tuple[int, float, list[float]]:
    """(output tokens, time to first token, gaps between responses) of one streamed request."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(
        callback=lambda result, error: responses.put((result, error, time.perf_counter()))
    )
    fields = {"text_input": prompt, "max_tokens": max_tokens, "stream": True}
    inputs = [generation_input(grpcclient, name, value) for name, value in fields.items()]
    start = time.perf_counter()
    client.async_stream_infer("bench", inputs, enable_empty_final_response=True)
    stamps, tokens = [], 0
    while True:
        result, error, at = responses.get(timeout=300)
        if error is not None:
            raise RuntimeError(error)
        response = result.get_response()
        if response.outputs:
            stamps.append(at)
            tokens = int(result.as_numpy("num_output_tokens").reshape(-1)[0])
        if response.parameters["triton_final_response"].bool_param:
            break
    client.stop_stream()
    client.close()
    gaps = [b - a for a, b in pairwise(stamps)]
    return tokens, stamps[0] - start, gaps


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"{statistics.median(ordered) * 1000:.1f} / {p95 * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(Path(tmp) / "model")
        baseline, baseline_latency = hf_baseline(model, args.max_tokens)
        repo = Path(tmp) / "repo"
        build_repository(BuildSpec(name="bench", task=Task.GENERATION, model=model, output=repo,
                                   max_seq_len=256, max_batch_size=16))  # fmt: skip
        ports = free_ports(3)
        config = ServerConfig(repo, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2])
        rows = []
        with LocalServer(config):
            stream_one(config.grpc_url, PROMPTS[0], 4)  # warm up
            for clients in (1, 4, 16):
                start = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    prompts = PROMPTS[: max(clients, 4)]
                    results = list(
                        pool.map(lambda p: stream_one(config.grpc_url, p, args.max_tokens), prompts)
                    )
                elapsed = time.perf_counter() - start
                tokens = sum(r[0] for r in results)
                rate = tokens / elapsed
                ttfts = [r[1] for r in results]
                gaps_s = [gap for r in results for gap in r[2]]
                rows.append(
                    (clients, rate, rate / baseline, percentiles(ttfts), percentiles(gaps_s))
                )

    print("\n| concurrent streams | output tokens/s | vs HF generate | TTFT p50 / p95 (ms) "
          "| inter-token p50 / p95 (ms) |")  # fmt: skip
    print("|---|---|---|---|---|")
    print(
        f"| HF generate, 1 at a time | {baseline:.0f} | 1.00x | - | "
        f"{percentiles(baseline_latency)} (per token) |"
    )
    for clients, rate, ratio, ttft, itl in rows:
        print(f"| {clients} | {rate:.0f} | {ratio:.2f}x | {ttft} | {itl} |")


if __name__ == "__main__":
    main()
