"""The in-process ceiling: a build's own tokenizer.json and model.onnx run in one Python
process with ONNX Runtime, no server. What a served build could reach at best on the same
files, cores and thread budget."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class InProcessEncoder:
    """Tokenize (truncate, pad to the longest) and run the graph: nothing else."""

    def __init__(self, tokenizer_json: Path, model_onnx: Path, max_seq_len: int, threads: int):
        import onnxruntime as ort
        import tokenizers

        self.tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_json))
        self.tokenizer.enable_truncation(max_seq_len)
        self.tokenizer.enable_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(model_onnx), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(list(texts))
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        feeds = {name: np.asarray(columns[name], dtype=np.int64) for name in self.inputs}
        return self.session.run(None, feeds)[0]


def sentences_per_second(
    encoder: InProcessEncoder,
    texts: Sequence[str],
    batch: int = 32,
    seconds: float = 10.0,
    warmup_s: float = 2.0,
) -> float:
    """Sentences per second through `encoder` at `batch`, after a warm-up."""
    done, i = 0, 0
    start = time.perf_counter() + warmup_s
    while (now := time.perf_counter()) < start + seconds:
        encoder([texts[(i + k) % len(texts)] for k in range(batch)])
        i += batch
        if now >= start:
            done += batch
    return done / (time.perf_counter() - start)


def one_at_a_time(encoder: InProcessEncoder, texts: Sequence[str], seconds: float) -> np.ndarray:
    """Latencies (seconds, sorted) of one sentence at a time, the first 20 not counted."""
    latencies = []
    deadline = time.perf_counter() + seconds
    for i in itertools.count():
        started = time.perf_counter()
        encoder([texts[i % len(texts)]])
        if i >= 20:
            latencies.append(time.perf_counter() - started)
        if started > deadline:
            break
    return np.sort(np.asarray(latencies))


def default_threads() -> int:
    """ONNX Runtime's own default, and the served engine step's: one per core."""
    return os.cpu_count() or 1
