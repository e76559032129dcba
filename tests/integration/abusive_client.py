"""An abusive client, run as its own process so that its client-side work (serialising
megabytes) does not compete with the measured client for the test process's GIL.

    python abusive_client.py KIND GRPC_URL MODEL

loops until killed; after each request it prints `<seconds> <outcome>` (outcome: `ok`, or the
error's first line) and flushes, then pauses PAUSE_S. What is abusive is the size of each
request, not their rate: a flood of requests of any size is for rate limiting in front of the
server, and on a 2-core machine a client serialising 10 MB back to back takes a core itself.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
import tritonclient.grpc as grpcclient

from tritonize.client import TritonizeClient

LONG_TEXT = ("All work and no play makes a long text. " * 23_000)[:900_000]  # 900 kB
LONG_PROMPT = "All work and no play makes a long prompt. " * 250_000  # 10.5 MB
STOP_WORD_FLOOD = ["stop"] * 100_000
PAUSE_S = 0.25
MOST_STOP_WORDS = [f"{i:03d}" + "z" * 125 for i in range(16)]  # 16 words of 128 characters


def long_texts(url: str, model: str) -> Callable[[], str]:
    """32 texts of 900 kB per request."""
    client = grpcclient.InferenceServerClient(url)
    texts = grpcclient.InferInput("TEXT", [32, 1], "BYTES")
    texts.set_data_from_numpy(np.array([[LONG_TEXT.encode()]] * 32, dtype=object))

    def call() -> str:
        client.infer(model, [texts], client_timeout=600)
        return "ok"

    return call


def long_prompt(url: str, model: str) -> Callable[[], str]:
    """A 10 MB prompt for a generator whose window holds a few dozen tokens."""
    return lambda: generate(url, model, LONG_PROMPT, max_tokens=4)


def stop_words(url: str, model: str) -> Callable[[], str]:
    """100,000 stop words (to be refused), then the most allowed; each as long a generation as
    the window allows, so that an accepted one is checked against its stop words at each step."""

    def call() -> str:
        flood = generate(url, model, "Hello", max_tokens=48, stop_words=STOP_WORD_FLOOD)
        most = generate(url, model, "Hello", max_tokens=48, stop_words=MOST_STOP_WORDS)
        return f"{flood} | {most}"

    return call


def generate(url: str, model: str, prompt: str, **fields: object) -> str:
    with TritonizeClient(url, "grpc", timeout_s=600) as client:
        try:
            "".join(client.generate(model, prompt, **fields))  # type: ignore[arg-type]
        except Exception as exc:
            return str(exc).splitlines()[0]
    return "ok"


KINDS = {"long-texts": long_texts, "long-prompt": long_prompt, "stop-words": stop_words}


def main(kind: str, url: str, model: str) -> None:
    call = KINDS[kind](url, model)
    while True:
        start = time.perf_counter()
        try:
            outcome = call()
        except Exception as exc:
            outcome = str(exc).splitlines()[0]
        print(f"{time.perf_counter() - start:.4f} {outcome}", flush=True)
        time.sleep(PAUSE_S)


if __name__ == "__main__":
    main(*sys.argv[1:4])
