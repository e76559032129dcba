"""Dynamic batching really merges requests of different lengths in the engine step."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tritonize.client import TritonizeClient
from tritonize.monitor.scrape import read
from tritonize.server import LocalServer
from tritonize.tasks.build import StepNames

from .conftest import EMBEDDER

CLIENTS = 16
REQUESTS_PER_CLIENT = 12
WORDS = [
    "serving",
    "transformers",
    "with",
    "dynamic",
    "batching",
    "on",
    "triton",
    "needs",
    "padding",
    "done",
    "right",
]


def engine_counts(server: LocalServer) -> tuple[float, float]:
    reading = read(server.config.metrics_url)
    engine = StepNames(EMBEDDER, 1).engine
    return reading.total("nv_inference_count", engine), reading.total(
        "nv_inference_exec_count", engine
    )


def test_sixteen_concurrent_clients_are_batched(server: LocalServer) -> None:
    # Mixed lengths: 1 to 12 words, so every request pads to a different length.
    def one_client(index: int) -> list[np.ndarray]:
        with TritonizeClient(server.config.grpc_url, "grpc") as client:
            return [
                client.embed(EMBEDDER, [" ".join(WORDS[: 1 + (index + i) % len(WORDS)])])
                for i in range(REQUESTS_PER_CLIENT)
            ]

    inferences_before, executions_before = engine_counts(server)
    with ThreadPoolExecutor(CLIENTS) as pool:
        vectors = [v for result in pool.map(one_client, range(CLIENTS)) for v in result]
    inferences_after, executions_after = engine_counts(server)
    inferences = inferences_after - inferences_before
    executions = executions_after - executions_before
    assert inferences == len(vectors) == CLIENTS * REQUESTS_PER_CLIENT
    assert all(v.shape == (1, 384) for v in vectors)
    achieved = inferences / executions
    print(f"achieved batch size {achieved:.1f} ({inferences:.0f} / {executions:.0f})")
    # Unbatched is 1; the two engine instances share the 16 clients (about 3 each, measured).
    assert achieved >= 2
