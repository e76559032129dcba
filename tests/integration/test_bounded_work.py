"""Work per request is bounded by what the model can use: an abusive client (megabyte texts,
a 10 MB prompt, a flood of stop words) leaves a concurrent normal client's latency within 2x
of what it is alone (plus CPU_SHARE_S), measured side by side in each test.

The abuser runs in its own process (abusive_client.py): serialising megabytes in this process
would slow the measured client through the GIL, which says nothing about the server.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import tritonclient.grpc as grpcclient

from tritonize.client import TritonizeClient
from tritonize.server import LocalServer
from tritonize.server.bundled import BundledTriton
from tritonize.tasks.build import StepNames

from .abusive_client import LONG_TEXT
from .conftest import EMBEDDER, GENERATOR

MEASURE_S = 3.0  # the normal client is timed this long alone, and at least this long beside
INTERVAL_S = 0.025  # it starts a request this often, however long earlier ones take
WORKERS = 8
ABUSIVE_SAMPLES = 3  # abusive requests answered while the normal client is timed beside them
ABUSER = Path(__file__).with_name("abusive_client.py")
# On two cores the abuser's process and the server reading its megabytes take CPU from the normal
# client whatever the server does; a client held up behind an abusive request waits for all of
# it instead (0.46 s for 32 texts of 900 kB through the bounded tokenizer, 52 s before).
CPU_SHARE_S = 0.03
ATTEMPTS = 3  # measured pairs, alone then beside, before a miss counts

Normal = Callable[[TritonizeClient], object]


def open_loop_latencies(
    connect: Callable[[], TritonizeClient], normal: Normal, until: Callable[[], bool]
) -> list[float]:
    """Latencies of `normal` requests started every INTERVAL_S for at least MEASURE_S and until
    `until()` holds (at most 5 min), each timed from when it was due to start. Open loop: a
    client that waits for each answer before asking again would send few requests during a
    stall, and the median would hide it."""
    local, clients = threading.local(), []

    def timed(due: float) -> float:
        if not hasattr(local, "client"):
            local.client = connect()
            clients.append(local.client)
        normal(local.client)
        return time.perf_counter() - due

    futures = []
    with ThreadPoolExecutor(WORKERS) as pool:
        start = time.perf_counter()
        while True:
            due = start + len(futures) * INTERVAL_S
            time.sleep(max(0.0, due - time.perf_counter()))
            futures.append(pool.submit(timed, due))
            elapsed = time.perf_counter() - start
            if (elapsed >= MEASURE_S and until()) or elapsed > 300:
                break
        latencies = [future.result() for future in futures]
    for client in clients:
        client.close()
    return latencies


@contextmanager
def abusing(kind: str, url: str, model: str) -> Iterator[list[tuple[float, str]]]:
    """The abusive client looping in its own process; yields its (seconds, outcome) lines."""
    process = subprocess.Popen(
        [sys.executable, str(ABUSER), kind, url, model], stdout=subprocess.PIPE, text=True
    )
    outcomes: list[tuple[float, str]] = []
    first = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            seconds, outcome = line.rstrip("\n").split(" ", 1)
            outcomes.append((float(seconds), outcome))
            first.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert first.wait(timeout=300), "the abusive client never finished a request"
        yield outcomes
    finally:
        process.kill()
        process.wait(timeout=30)
        reader.join(timeout=30)


def alone_and_beside(
    connect: Callable[[], TritonizeClient], normal: Normal, kind: str, url: str, model: str
) -> tuple[float, float, list[tuple[float, str]]]:
    """The normal client's median latency alone, then beside the abusive client: measured
    again (up to ATTEMPTS pairs) while the pair misses the bound. Other work on a shared
    2-core machine can slow one window (a CI run measured 73 ms beside 12 ms alone, then three
    runs 17-23 ms); a server held up by the abuse (60x, 52 s before) misses every pair."""
    for _ in range(ATTEMPTS):
        alone, beside, seen = _alone_and_beside(connect, normal, kind, url, model)
        if beside <= 2 * alone + CPU_SHARE_S:
            break
    return alone, beside, seen


def _alone_and_beside(
    connect: Callable[[], TritonizeClient], normal: Normal, kind: str, url: str, model: str
) -> tuple[float, float, list[tuple[float, str]]]:
    with connect() as client:
        normal(client)  # warm
    alone = statistics.median(open_loop_latencies(connect, normal, lambda: True))
    with abusing(kind, url, model) as abusive:
        # Beside several abusive requests, not just one (the first was answered already).
        latencies = open_loop_latencies(connect, normal, lambda: len(abusive) > ABUSIVE_SAMPLES)
        seen = list(abusive)
    beside = statistics.median(latencies)
    abusive_s = statistics.median(seconds for seconds, _ in seen)
    print(
        f"\n{kind}: normal client median {alone * 1000:.1f} ms alone, {beside * 1000:.1f} ms "
        f"beside the abuser (worst {max(latencies) * 1000:.0f} ms of {len(latencies)}; "
        f"{len(seen)} abusive requests answered, median {abusive_s:.2f} s)"
    )
    return alone, beside, seen


def stub_rss_mib(server: LocalServer, model: str) -> float:
    """Resident memory of the Python-backend stub that runs `model`."""
    assert server.process is not None
    for child in psutil.Process(server.process.pid).children(recursive=True):
        if any(f"/{model}/" in part for part in child.cmdline()):
            return float(child.memory_info().rss) / 2**20
    raise AssertionError(f"no stub process for {model}")


# -- long texts: a bounded prefix is tokenized --------------------------------------------------

TOKENIZER = StepNames(EMBEDDER, 1).tokenizer


def test_megabyte_texts_do_not_hold_up_a_one_sentence_client(server: LocalServer) -> None:
    """Before: 32 texts of 900 kB blocked a one-sentence client for 52 s and grew the tokenizer
    to 2.9 GB. The abuser calls the (public) tokenizer step, where that work was."""
    rss_before = stub_rss_mib(server, TOKENIZER)
    alone, beside, abusive = alone_and_beside(
        lambda: TritonizeClient(server.config.http_url, "http"),
        lambda client: client.embed(EMBEDDER, ["A one-sentence request."]),
        "long-texts", server.config.grpc_url, TOKENIZER,
    )  # fmt: skip
    rss_after = stub_rss_mib(server, TOKENIZER)
    print(f"tokenizer stub: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after the abuse")
    assert all(outcome == "ok" for _, outcome in abusive), abusive[:1]
    assert beside <= 2 * alone + CPU_SHARE_S
    assert rss_after - rss_before < 512


def test_megabyte_texts_cost_the_ensemble_what_texts_of_the_window_cost(
    server: LocalServer,
) -> None:
    """Through the ensemble, 32 texts of 900 kB cost what 32 texts of exactly the window cost
    (the engine's work on 32 x 256 tokens): the text beyond the window adds nothing."""
    client = grpcclient.InferenceServerClient(server.config.grpc_url)

    def seconds(text: str) -> float:
        texts = grpcclient.InferInput("TEXT", [32, 1], "BYTES")
        texts.set_data_from_numpy(np.array([[text.encode()]] * 32, dtype=object))
        start = time.perf_counter()
        result = client.infer(EMBEDDER, [texts], client_timeout=600)
        assert result.as_numpy("TRUNCATED").all()
        return time.perf_counter() - start

    window_text = "All work and no play makes a long text. " * 40  # just over 256 tokens
    try:
        seconds(window_text)  # warm
        pairs = [(seconds(window_text), seconds(LONG_TEXT)) for _ in range(5)]  # interleaved
        window = statistics.median(at_window for at_window, _ in pairs)
        huge = statistics.median(at_900kb for _, at_900kb in pairs)
    finally:
        client.close()
    print(f"\n32 texts through the ensemble: {window:.2f} s at the window, {huge:.2f} s at 900 kB")
    assert huge <= 2 * window


# -- generation: a prompt over the window is refused before the expensive part ------------------


def stream_some_tokens(client: TritonizeClient) -> None:
    """A short streamed generation: the normal client of the generation tests."""
    text = "".join(client.generate(GENERATOR, "Once upon a time", max_tokens=8, stream=True))
    assert text


def test_a_10mb_prompt_is_refused_without_holding_up_other_streams(server: LocalServer) -> None:
    """Before: a 10 MB prompt held every other stream's first token for 14 s, then was refused."""
    alone, beside, abusive = alone_and_beside(
        lambda: TritonizeClient(server.config.grpc_url, "grpc"), stream_some_tokens,
        "long-prompt", server.config.grpc_url, GENERATOR,
    )  # fmt: skip
    for _, outcome in abusive:
        assert "`text_input` is over 63 tokens" in outcome, outcome
        assert "the context window is 64" in outcome
    assert beside <= 2 * alone + CPU_SHARE_S


# -- stop words: capped in count and length -----------------------------------------------------


def test_stop_words_are_capped_and_the_allowed_most_does_not_slow_others(
    server: LocalServer,
) -> None:
    """Before: 100,000 stop words slowed every stream 60x. Now more than 16 are refused before
    any is read, and the most allowed (16 of 128 characters) costs others little."""
    alone, beside, abusive = alone_and_beside(
        lambda: TritonizeClient(server.config.grpc_url, "grpc"), stream_some_tokens,
        "stop-words", server.config.grpc_url, GENERATOR,
    )  # fmt: skip
    for _, outcome in abusive:
        flood, most = outcome.split(" | ")
        assert flood.endswith("`stop_words` has 100000 words: at most 16 allowed"), outcome
        assert most == "ok", outcome
    assert beside <= 2 * alone + CPU_SHARE_S


# -- request bodies: Triton has no cap of its own -----------------------------------------------


def test_tritonserver_offers_no_request_body_limit() -> None:
    """The bundled tritonserver 2.51 has no option capping an HTTP body's size, so every model
    bounds its own work and the README names a proxy in front as the cap. If this test fails,
    the server gained such an option: use it in `serve`."""
    bundled = BundledTriton.find()
    shown = subprocess.run([str(bundled.binary), "--help"], capture_output=True, text=True,
                           env=bundled.environment(), timeout=60)  # fmt: skip
    help_text = shown.stdout + shown.stderr
    assert "--http-port" in help_text  # it is the help we read
    for option in ("body", "max-request", "request-size", "max-input-size", "payload"):
        assert option not in help_text.lower(), option
