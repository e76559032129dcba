"""Engine step for target `local`: ONNX Runtime inside a Python-backend model.

The dynamic batcher hands over several requests at once, each padded to its own length
(the inputs are declared ragged, so requests of any length merge). Their rows are grouped by
length into as few ONNX Runtime calls as pays (`plan_calls`): one call pads every row to the
longest, so a 10-token text batched with a 250-token one would cost 25 times its own work.
The output rows are put back in order and split per request.

The step is public (a client may call it directly), so every request is checked first: ids
and mask of the same 2-D shape, no longer than the window the build was validated at (a longer
row fails the whole batched call, or costs quadratic attention memory), a mask of 0s and 1s
with at least one token per row (an all-zero row would pool to a zero vector), and ids inside
the vocabulary (ONNX Runtime's Gather takes -1 as the last row). A bad request is refused
alone; the others run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    ATTENTION_MASK,
    INPUT_IDS,
    TOKEN_TYPE_IDS,
    RequestError,
    error_responses,
    model_parameters,
    rejection,
    version_dir,
)
from .features import PREDICTION, embedding_counts, feature_metrics

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: the logic below stays importable and testable
    pb_utils = None


Batch = dict[str, np.ndarray]  # one request's graph inputs by name, each [rows, sequence]


def pad_and_stack(batches: list[Batch], pad_id: int) -> Batch:
    """Stack each input's `[b_i, L_i]` rows into `[sum b_i, max L_i]`, padding on the right
    (ids with `pad_id`, the mask and token types with 0)."""
    width = max(batch[INPUT_IDS].shape[1] for batch in batches)
    rows = sum(batch[INPUT_IDS].shape[0] for batch in batches)
    stacked = {
        name: np.full((rows, width), pad_id if name == INPUT_IDS else 0, dtype=np.int64)
        for name in batches[0]
    }
    start = 0
    for batch in batches:
        for name, value in batch.items():
            stacked[name][start : start + len(value), : value.shape[1]] = value
        start += len(batch[INPUT_IDS])
    return stacked


# The cost of one ONNX Runtime call, in tokens of a row's work, as measured for
# all-MiniLM-L6-v2 on one core of the reference machine (a call runs the whole graph and
# streams every weight once, whatever its batch: about 1.9 ms, the work of some 20 tokens;
# per-token cost grows with the row's width through attention, by a half at 115 tokens). Other
# models are assumed to keep these ratios: their weights and per-token work grow together.
CALL_TOKENS = 20.0
ATTENTION_WIDTH = 230.0


def call_cost(rows: int | np.ndarray, width: int | np.ndarray) -> float | np.ndarray:
    """The modelled cost of one call over `rows` rows padded to `width` tokens."""
    return CALL_TOKENS + rows * width * (1 + width / ATTENTION_WIDTH)


def plan_calls(lengths: np.ndarray) -> list[np.ndarray]:
    """Row indices grouped into session calls, each to be padded to its longest row: of the
    groupings of the rows sorted by length (the only ones worth having), the one of least
    `call_cost` in all, found by dynamic programming over the distinct lengths."""
    order = np.argsort(lengths, kind="stable")
    widths, counts = np.unique(lengths[order], return_counts=True)
    rows_below = np.concatenate(([0], np.cumsum(counts)))  # rows shorter than widths[i]
    best = np.zeros(len(widths) + 1)  # best[j]: cost of the rows shorter than widths[j]
    start = np.zeros(len(widths) + 1, dtype=np.int64)  # where the last group of best[j] starts
    for j in range(1, len(widths) + 1):
        costs = best[:j] + call_cost(rows_below[j] - rows_below[:j], widths[j - 1])
        start[j] = np.argmin(costs)
        best[j] = costs[start[j]]
    groups, j = [], len(widths)
    while j:
        groups.append(order[rows_below[start[j]] : rows_below[j]])
        j = int(start[j])
    return groups[::-1]


def check_request(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    vocab_size: int,
    max_len: int | None = None,
    token_type_ids: np.ndarray | None = None,
) -> None:
    """Raise `RequestError` naming the first thing wrong with one request's tensors."""
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise RequestError(
            f"`{INPUT_IDS}` has shape {list(input_ids.shape)} and `{ATTENTION_MASK}` "
            f"{list(attention_mask.shape)}: expected the same shape [batch, sequence]"
        )
    if token_type_ids is not None:
        if token_type_ids.shape != input_ids.shape:
            raise RequestError(
                f"`{TOKEN_TYPE_IDS}` has shape {list(token_type_ids.shape)}: expected "
                f"{list(input_ids.shape)}, the shape of `{INPUT_IDS}`"
            )
        if not np.isin(token_type_ids, (0, 1)).all():
            raise RequestError(f"`{TOKEN_TYPE_IDS}` holds values other than 0 and 1")
    if input_ids.size == 0:
        raise RequestError(f"`{INPUT_IDS}` is empty: expected at least one token per row")
    if max_len is not None and input_ids.shape[1] > max_len:
        raise RequestError(
            f"`{INPUT_IDS}` has {input_ids.shape[1]} tokens per row: this engine takes at most "
            f"{max_len} (the build's max_seq_len)"
        )
    if not np.isin(attention_mask, (0, 1)).all():
        raise RequestError(f"`{ATTENTION_MASK}` holds values other than 0 and 1")
    empty = np.flatnonzero(attention_mask.sum(axis=1) == 0)
    if empty.size:
        raise RequestError(
            f"`{ATTENTION_MASK}` row {int(empty[0])} is all zeros: every row needs a token"
        )
    outside = input_ids[(input_ids < 0) | (input_ids >= vocab_size)]
    if outside.size:
        raise RequestError(
            f"`{INPUT_IDS}` holds {int(outside[0])}: expected token ids in 0..{vocab_size - 1}"
        )


class OnnxEncoder:
    """One ONNX Runtime session over the exported graph."""

    def __init__(self, path: Path, output_name: str, pad_id: int, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Idle threads sleep rather than spin: the tokenizer and Triton share these cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.output_name = output_name
        self.pad_id = pad_id
        self.inputs = tuple(i.name for i in self.session.get_inputs())  # ids, mask [, types]
        (output,) = (o for o in self.session.get_outputs() if o.name == output_name)
        self.per_token = len(output.shape) == 3  # [batch, sequence, ...]: no row is cut
        self.vocab_size = self._probe_vocab_size()

    def _probe_vocab_size(self) -> int:
        """The first id the graph's embedding lookup refuses, found by bisection (the graph
        does not name its vocabulary; a one-token run costs well under a millisecond)."""
        import onnxruntime as ort

        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the refused probes are expected: do not log them
        one = {name: np.zeros((1, 1), dtype=np.int64) for name in self.inputs}
        one[ATTENTION_MASK] = np.ones((1, 1), dtype=np.int64)

        def accepted(token: int) -> bool:
            feeds = {**one, INPUT_IDS: np.array([[token]], dtype=np.int64)}
            try:
                self.session.run([self.output_name], feeds, quiet)
            except Exception:
                return False
            return True

        low, high = 1, 2**31  # id 0 is always a row of the table
        while low < high:
            middle = (low + high) // 2
            low, high = (middle + 1, high) if accepted(middle) else (low, middle)
        return low

    def run(self, batches: list[Batch]) -> list[np.ndarray]:
        """The outputs of all batches' rows, run in the calls `plan_calls` chooses and split
        back per batch (a per-token output cut back to the batch's own length)."""
        stacked = pad_and_stack(batches, self.pad_id)
        output = self._run_grouped(stacked, self._row_lengths(batches, stacked))
        splits = np.cumsum([batch[INPUT_IDS].shape[0] for batch in batches])[:-1]
        parts = np.split(output, splits)
        if output.ndim == 3:
            widths = [batch[INPUT_IDS].shape[1] for batch in batches]
            parts = [part[:, :width] for part, width in zip(parts, widths, strict=True)]
        return parts

    def _row_lengths(self, batches: list[Batch], stacked: Batch) -> np.ndarray:
        """How much of each stacked row a call must keep. A pooled output ignores the
        positions after a row's last attended token, so they are dropped; a per-token output
        keeps its request's whole width, so every position a client gets back is computed as
        if the request ran alone."""
        if self.per_token:
            return np.concatenate(
                [np.full(len(b[INPUT_IDS]), b[INPUT_IDS].shape[1]) for b in batches]
            )
        mask = stacked[ATTENTION_MASK]
        return mask.shape[1] - np.argmax(mask[:, ::-1] != 0, axis=1)

    def _run_grouped(self, stacked: Batch, lengths: np.ndarray) -> np.ndarray:
        """One session call per planned group of rows, each cut to its longest row; the
        outputs back in the rows' order (a per-token output at the stack's full width)."""
        groups = plan_calls(lengths)
        rows, width = stacked[INPUT_IDS].shape
        if len(groups) == 1 and lengths.max() == width:  # nothing to cut or reorder
            return self._call(stacked)
        parts = [
            (group, self._call({k: v[group, : lengths[group].max()] for k, v in stacked.items()}))
            for group in groups
        ]
        first = parts[0][1]
        shape = (rows, width, *first.shape[2:]) if self.per_token else (rows, *first.shape[1:])
        output = np.zeros(shape, dtype=np.float32)
        for group, part in parts:
            output[group, : part.shape[1]] = part
        return output

    def _call(self, feeds: Batch) -> np.ndarray:
        (output,) = self.session.run([self.output_name], feeds)
        return output.astype(np.float32, copy=False)


def default_threads(args: dict[str, str]) -> int:
    """The cores shared out between the model's instances (at least one thread each)."""
    groups = json.loads(args["model_config"]).get("instance_group", [])
    instances = sum(int(group.get("count", 1)) for group in groups) or 1
    return max(1, (os.cpu_count() or 1) // instances)


class TritonPythonModel:
    """Thin adapter: tensors in, tensors out, errors as responses."""

    def initialize(self, args: dict[str, str]) -> None:
        params = model_parameters(args)
        self.name = args["model_name"]
        self.encoder = OnnxEncoder(
            version_dir(args) / "model.onnx",
            output_name=params["output_name"],
            pad_id=int(params["pad_token_id"]),
            threads=int(params.get("intra_op_threads", "0")) or default_threads(args),
        )
        # Repositories built before the engine knew its window leave it unbounded.
        self.max_len = int(params["max_seq_len"]) if "max_seq_len" in params else None
        # An embedding's cosine to its reference centroid (the only prediction feature an
        # engine step sees: other tasks observe theirs after the engine).
        self.features = feature_metrics(pb_utils, args, PREDICTION)
        if self.features is not None and not self.features.centroid.size:
            self.features = None

    def finalize(self) -> None:
        if self.features is not None:
            self.features.flush()

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        valid: dict[int, Batch] = {}
        for i, request in enumerate(requests):
            batch = {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name in self.encoder.inputs
            }
            try:
                check_request(
                    batch[INPUT_IDS], batch[ATTENTION_MASK], self.encoder.vocab_size,
                    self.max_len, batch.get(TOKEN_TYPE_IDS),
                )  # fmt: skip
                valid[i] = batch
            except RequestError as exc:
                responses[i] = rejection(pb_utils, exc)
        for i, response in zip(valid, self._run(list(valid.values())), strict=True):
            responses[i] = response
        return responses

    def _run(self, batches: list[Batch]) -> list[Any]:
        if not batches:
            return []
        try:
            outputs = self.encoder.run(batches)
        except Exception as exc:  # answer every request rather than crash the stub
            pb_utils.Logger.log_error(f"{self.name}: {exc!r}")
            return error_responses(pb_utils, len(batches), f"engine failed: {exc}")
        name = self.encoder.output_name
        if self.features is not None:
            self.features.add(embedding_counts(np.concatenate(outputs), self.features.centroid))
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, out)])
            for out in outputs
        ]
