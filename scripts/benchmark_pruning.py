#!/usr/bin/env python
"""What pruning gives the bundled all-MiniLM-L6-v2 on ONNX Runtime CPU (a benchmark, not a test).

Each variant is pruned in PyTorch, exported the way a build exports an embedding model
(`MeanPooledEmbedding`, `export_graph`, then `validate_onnx` against its own PyTorch model),
and held to the INT8 gate of `tritonize.engine.quantize` against the unpruned fp32 graph on the
gate corpus: mean cosine >= 0.99 and top-10 neighbour overlap >= 0.9. Speed is fp32 time over
variant time on the gate's middle batch with `measure_speedup` (same threads, warm-up excluded,
the two graphs timed in turn), repeated `--rounds` times: the median and the range are shown.

Variants, side by side:
  fp32              the unpruned graph against itself: the noise floor of the speed figures
  unstructured-P    global L1 magnitude pruning of the encoder's Linear weights (share P),
                    `torch.nn.utils.prune` then `prune.remove`: zeros in dense matrices
  heads-K           K of the 12 attention heads removed in every layer (Q, K, V sliced, and
                    the output projection's inputs)
  ffn-P             share P of the intermediate neurons removed in every layer (the
                    intermediate Linear's outputs and the output Linear's inputs)
  int8 ...          ONNX Runtime dynamic INT8 (`quantize`) of the fp32 graph and of the
                    lightest head and FFN cuts, the `--int8-fp32-nodes` MatMuls most sensitive
                    to int8 (the project's `sensitivity` ranking) left in fp32, as a build
                    whose gate needs them leaves them (`--no-int8` skips these rows)

Heads and neurons are ranked by `--score`: `calibration` (default) measures each head's and
each neuron's contribution on calibration texts and folds the mean contribution of what is
removed into the next bias; `weights` ranks heads by the L1 norm of their output-projection
columns and neurons by the L1 norm of their in- and out-weights. Calibration texts are
`gate-like` (default: the gate corpus's generator with another seed, none of the gate's texts)
or `reference` (the built-in English reference texts, no overlap with the gate's sentences).
Nothing is fine-tuned.

    .venv/bin/python scripts/benchmark_pruning.py [--unstructured 0.1 0.3 0.5] \
        [--heads 1 2 3] [--ffn 0.1 0.25 0.5] [--score calibration|weights] \
        [--calibration gate-like|reference] [--rounds 3] [--runs 5] \
        [--int8-fp32-nodes 4 | --no-int8]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import tokenizers
import torch
from torch import nn
from torch.nn.utils import prune
from transformers.pytorch_utils import prune_linear_layer

from tritonize.cli import number_type, whole_number
from tritonize.engine.quantize import (
    BATCH,
    NEIGHBOURS,
    Feeds,
    Int8Gate,
    embedding_figures,
    encode_batches,
    gate_corpus,
    gate_misses,
    measure_speedup,
    quantize,
    run_batches,
    sensitivity,
    session,
    weight_matmuls,
)
from tritonize.export.onnx_export import ExportedModel, export_graph, load_tokenizer, validate_onnx
from tritonize.export.tasks import TaskDefinition, task_definition
from tritonize.monitor.profile import builtin_reference_texts
from tritonize.progress import note, step
from tritonize.spec import BuildSpec, Task, bundled_model_dir

GATE = Int8Gate()
CLOSE_COSINE = 0.97  # a failing variant this close may be worth a distillation pass
# Inputs of these Linears, per layer, are what the calibration scores read.
ATTENTION_OUT, FFN_OUT = "attention", "ffn"


@dataclass(frozen=True)
class Setup:
    """The model, the gate corpus as feeds, and the fp32 graph's answers on it."""

    model_dir: Path
    definition: TaskDefinition
    spec: BuildSpec
    tokenizer: tokenizers.Tokenizer
    pad_id: int
    graph_inputs: tuple[str, ...]
    output_dims: tuple[int, ...]
    batches: list[Feeds]
    reference: np.ndarray
    fp32_path: Path
    workdir: Path


@dataclass
class Row:
    """One variant's figures."""

    name: str
    cut: float  # share of the encoder layers' Linear weights removed or zeroed
    params: int
    nonzero: int
    onnx_mb: float
    zip_mb: float
    speedups: list[float]
    figures: dict[str, float]
    misses: list[str] = field(default_factory=list)

    @property
    def passes(self) -> bool:
        return not self.misses


# ---------------------------------------------------------------------------- the model


def encoder_layers(model: nn.Module) -> list[Any]:
    """The transformer layers of a `MeanPooledEmbedding` over a BERT-style encoder."""
    return list(model.encoder.encoder.layer)  # type: ignore[union-attr, arg-type]


def layer_linears(model: nn.Module) -> list[nn.Linear]:
    """Every Linear of the encoder layers (embeddings and the unused pooler left out)."""
    return [
        m for layer in encoder_layers(model) for m in layer.modules() if isinstance(m, nn.Linear)
    ]


def linear_weight_count(model: nn.Module) -> tuple[int, int]:
    """(weights, non-zero weights) of the encoder layers' Linears."""
    weights = [m.weight.detach() for m in layer_linears(model)]
    return sum(w.numel() for w in weights), sum(int(w.count_nonzero()) for w in weights)


def head_size(layer: Any) -> int:
    return int(layer.attention.self.attention_head_size)


def head_count(layer: Any) -> int:
    return int(layer.attention.output.dense.in_features) // head_size(layer)


# ------------------------------------------------------------------------------ calibration


def capture_inputs(model: nn.Module, batches: list[Feeds]) -> dict[tuple[str, int], torch.Tensor]:
    """The inputs of each layer's attention output projection (the heads' context vectors) and
    FFN output Linear (the intermediate activations), one row per non-padding token."""
    captured: dict[tuple[str, int], list[torch.Tensor]] = {}
    masks: list[torch.Tensor] = []

    def recorder(key: tuple[str, int]) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            captured.setdefault(key, []).append(inputs[0].detach())

        return hook

    hooks = []
    for index, layer in enumerate(encoder_layers(model)):
        hooks.append(
            layer.attention.output.dense.register_forward_pre_hook(recorder((ATTENTION_OUT, index)))
        )
        hooks.append(layer.output.dense.register_forward_pre_hook(recorder((FFN_OUT, index))))
    try:
        with torch.inference_mode():
            for feeds in batches:
                model(*(torch.from_numpy(feeds[name]) for name in ("input_ids", "attention_mask")))
                masks.append(torch.from_numpy(feeds["attention_mask"]).bool())
    finally:
        for hook in hooks:
            hook.remove()
    return {
        key: torch.cat([rows[mask] for rows, mask in zip(values, masks, strict=True)])
        for key, values in captured.items()
    }


# ----------------------------------------------------------------------------- the scores


def head_scores(layer: Any, context: torch.Tensor | None) -> torch.Tensor:
    """Each head's importance: the mean norm of what it adds to the attention output on the
    calibration tokens, or without them the L1 norm of its output-projection columns."""
    weight = layer.attention.output.dense.weight.detach()
    size, heads = head_size(layer), head_count(layer)
    scores = []
    for head in range(heads):
        cols = slice(head * size, (head + 1) * size)
        if context is None:
            scores.append(weight[:, cols].abs().sum())
        else:
            scores.append((context[:, cols] @ weight[:, cols].T).norm(dim=1).mean())
    return torch.stack(scores)


def neuron_scores(layer: Any, activations: torch.Tensor | None) -> torch.Tensor:
    """Each intermediate neuron's importance: its mean |activation| times the norm of its
    out-weights, or without calibration the L1 norm of its in- and out-weights."""
    weight_in = layer.intermediate.dense.weight.detach()
    weight_out = layer.output.dense.weight.detach()
    if activations is None:
        return weight_in.abs().sum(dim=1) + weight_out.abs().sum(dim=0)
    return activations.abs().mean(dim=0) * weight_out.norm(dim=0)


# ---------------------------------------------------------------------------- the pruning


def slice_linear(linear: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """`linear` with only the `keep` rows (dim 0: outputs) or columns (dim 1: inputs)."""
    return prune_linear_layer(linear, cast(torch.LongTensor, keep), dim=dim)


def drop_inputs(linear: nn.Linear, keep: torch.Tensor, inputs: torch.Tensor | None) -> nn.Linear:
    """`linear` reading only its `keep` inputs. With calibration inputs, the mean of what the
    removed inputs contributed moves into the bias, so that the output keeps its mean."""
    sliced = slice_linear(linear, keep, dim=1)
    if inputs is not None and sliced.bias is not None:
        removed = torch.ones(linear.in_features, dtype=torch.bool)
        removed[keep] = False
        with torch.no_grad():
            weight = linear.weight.detach()
            sliced.bias.add_(weight[:, removed] @ inputs[:, removed].mean(dim=0))
    return sliced


def lowest(scores: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the indices kept, sorted; the `count` lowest-scored indices removed)."""
    order = torch.argsort(scores)
    return torch.sort(order[count:]).values, order[:count]


def prune_heads(
    model: nn.Module, count: int, captured: dict[tuple[str, int], torch.Tensor] | None
) -> nn.Module:
    """Remove the `count` least important attention heads of every layer (in place)."""
    for index, layer in enumerate(encoder_layers(model)):
        context = None if captured is None else captured[ATTENTION_OUT, index]
        size = head_size(layer)
        kept_heads, _ = lowest(head_scores(layer, context), count)
        keep = torch.cat([torch.arange(h * size, (h + 1) * size) for h in kept_heads.tolist()])
        attention = layer.attention.self
        for name in ("query", "key", "value"):
            setattr(attention, name, slice_linear(getattr(attention, name), keep, dim=0))
        layer.attention.output.dense = drop_inputs(layer.attention.output.dense, keep, context)
        # The forward infers the head count from the shapes; these keep the module consistent.
        attention.num_attention_heads = len(kept_heads)
        attention.all_head_size = len(keep)
    return model


def prune_ffn(
    model: nn.Module, share: float, captured: dict[tuple[str, int], torch.Tensor] | None
) -> nn.Module:
    """Remove `share` of the intermediate neurons of every layer (in place)."""
    for index, layer in enumerate(encoder_layers(model)):
        activations = None if captured is None else captured[FFN_OUT, index]
        width = layer.intermediate.dense.out_features
        keep, _ = lowest(neuron_scores(layer, activations), round(width * share))
        layer.intermediate.dense = slice_linear(layer.intermediate.dense, keep, dim=0)
        layer.output.dense = drop_inputs(layer.output.dense, keep, activations)
    return model


def prune_unstructured(model: nn.Module, share: float) -> nn.Module:
    """Zero the `share` of the encoder layers' Linear weights smallest in magnitude, ranked
    over all of them together, and make the zeros permanent (in place)."""
    targets = [(linear, "weight") for linear in layer_linears(model)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=share)
    for module, name in targets:
        prune.remove(module, name)
    return model


# -------------------------------------------------------------------------------- the graphs


def export(model: nn.Module, path: Path, setup: Setup) -> Path:
    """`model` exported and checked the way a build does it."""
    export_graph(
        model, setup.definition.output_name, path, setup.spec.opset, setup.graph_inputs,
        setup.output_dims,
    )  # fmt: skip
    exported = ExportedModel(
        onnx_path=path,
        task=setup.definition,
        output_dims=setup.output_dims,
        tokenizer=setup.tokenizer,
        pad_token_id=setup.pad_id,
        graph_inputs=setup.graph_inputs,
    )
    validate_onnx(model, exported, setup.spec)
    return path


def onnx_params(path: Path) -> tuple[int, int]:
    """(weights, non-zero weights) in the graph's initializers, embeddings included."""
    import onnx
    from onnx import numpy_helper

    arrays = [numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer]
    floats = [a for a in arrays if a.dtype.kind == "f" or a.dtype == np.int8]
    return sum(a.size for a in floats), sum(int(np.count_nonzero(a)) for a in floats)


def sizes_mb(path: Path) -> tuple[float, float]:
    """(file size, size compressed with zlib level 1) in MB: zeros only pay off compressed."""
    data = path.read_bytes()
    return len(data) / 1e6, len(zlib.compress(data, 1)) / 1e6


def speedups(setup: Setup, path: Path, rounds: int, runs: int) -> list[float]:
    """fp32 time over `path`'s time on the gate's middle batch, once per round."""
    feeds = setup.batches[len(setup.batches) // 2]
    return [measure_speedup(setup.fp32_path, path, feeds, runs) for _ in range(rounds)]


def measure(name: str, path: Path, cut: float, setup: Setup, args: argparse.Namespace) -> Row:
    """Everything the table shows about the graph at `path`."""
    params, nonzero = onnx_params(path)
    onnx_mb, zip_mb = sizes_mb(path)
    if path == setup.fp32_path:
        candidate = setup.reference
    else:
        candidate = run_batches(session(path), setup.batches)
    figures = embedding_figures(setup.reference, candidate)
    misses = gate_misses(Task.EMBEDDING, figures, GATE)
    ratios = speedups(setup, path, args.rounds, args.runs)
    row = Row(name, cut, params, nonzero, onnx_mb, zip_mb, ratios, figures, misses)
    note(
        f"speed-up {statistics.median(ratios):.2f}x, mean cosine {figures['mean_cosine']:.4f}, "
        f"top-{NEIGHBOURS} overlap {figures['neighbour_overlap']:.3f}: "
        + ("passes" if row.passes else "fails")
    )
    return row


# ------------------------------------------------------------------------------ the variants


@dataclass(frozen=True)
class Variant:
    """A pruned model to build: its name and how to prune a fresh copy of the fp32 model."""

    name: str
    prune: Callable[[nn.Module], nn.Module]
    int8: bool = False  # also measured as dynamic INT8


def variants(
    args: argparse.Namespace, captured: dict[tuple[str, int], torch.Tensor] | None
) -> list[Variant]:
    found = [
        Variant(f"unstructured-{share:g}", partial(prune_unstructured, share=share))
        for share in args.unstructured
    ]
    found += [
        Variant(f"heads-{count}", partial(prune_heads, count=count, captured=captured), int8=i == 0)
        for i, count in enumerate(sorted(args.heads))
    ]
    found += [
        Variant(f"ffn-{share:g}", partial(prune_ffn, share=share, captured=captured), int8=i == 0)
        for i, share in enumerate(sorted(args.ffn))
    ]
    return found


def run_variant(
    variant: Variant,
    base: nn.Module,
    setup: Setup,
    args: argparse.Namespace,
    int8_fp32_nodes: tuple[str, ...] | None,
) -> list[Row]:
    """The variant's fp32 row, and its INT8 row where asked."""
    with step(f"{variant.name}: pruning, exporting, gate on {len(setup.reference)} texts, speed"):
        model = variant.prune(copy.deepcopy(base)).eval()
        _, nonzero = linear_weight_count(model)
        full, _ = linear_weight_count(base)
        cut = 1 - nonzero / full
        path = export(model, setup.workdir / f"{variant.name}.onnx", setup)
        rows = [measure(variant.name, path, cut, setup, args)]
    if variant.int8 and int8_fp32_nodes is not None:
        rows.append(int8_row(variant.name, path, cut, setup, args, int8_fp32_nodes))
    return rows


def int8_fp32_nodes(setup: Setup, count: int) -> tuple[str, ...]:
    """The `count` MatMuls of the fp32 graph most sensitive to int8, by the project's ranking
    on the batches `build_int8` calibrates on (the shortest and the longest). Pruning keeps
    node names (they follow module paths), so the same names apply to every variant."""
    with step(f"INT8: the {count} MatMuls most sensitive to int8, left in fp32"):
        ranked = sensitivity(setup.fp32_path, [setup.batches[0], setup.batches[-1]], setup.workdir)
        for name, error in ranked[:count]:
            note(f"{name}: relative error {error:.3g}")
    return tuple(name for name, _ in ranked[:count])


def int8_row(
    name: str,
    source: Path,
    cut: float,
    setup: Setup,
    args: argparse.Namespace,
    fp32_nodes: tuple[str, ...],
) -> Row:
    with step(f"int8 dynamic of {name} ({len(fp32_nodes)} MatMuls in fp32)"):
        missing = set(fp32_nodes) - {node for node, _, _ in weight_matmuls(_load(source))}
        if missing:
            note(f"not in this graph, so quantized after all: {', '.join(sorted(missing))}")
        path = quantize(source, setup.workdir / f"{name}.int8.onnx", "dynamic", fp32_nodes, [])
        return measure(f"int8 {name}", path, cut, setup, args)


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False)


# --------------------------------------------------------------------------------- the setup


def calibration_feeds(
    args: argparse.Namespace, tokenizer: tokenizers.Tokenizer, pad_id: int, gate: list[str]
) -> list[Feeds]:
    """`--calibration-texts` texts that are not in the gate corpus, as feeds."""
    if args.calibration == "reference":
        texts = builtin_reference_texts(args.calibration_texts)
    else:
        excluded = set(gate)
        pool = gate_corpus(args.calibration_texts + len(gate), seed=1)
        texts = [t for t in pool if t not in excluded][: args.calibration_texts]
    batches, _ = encode_batches(
        tokenizer, texts, args.max_seq_len, pad_id, ("input_ids", "attention_mask")
    )
    return batches


def prepare(args: argparse.Namespace, workdir: Path) -> tuple[Setup, nn.Module, list[str]]:
    """Load the model, export the fp32 graph, and run it on the gate corpus."""
    model_dir = bundled_model_dir()
    definition = task_definition(Task.EMBEDDING)
    spec = BuildSpec(name="pruning", task=Task.EMBEDDING, max_seq_len=args.max_seq_len)
    with step(f"Loading {model_dir}"):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        base = definition.load(model_dir, False)
        tokenizer, pad_id = load_tokenizer(model_dir, False)
    texts = gate_corpus(args.texts)
    graph_inputs = definition.graph_inputs(config)
    batches, _ = encode_batches(tokenizer, texts, args.max_seq_len, pad_id, graph_inputs)
    setup = Setup(
        model_dir, definition, spec, tokenizer, pad_id, graph_inputs,
        definition.output_dims(config), batches, np.empty(0), workdir / "fp32.onnx", workdir,
    )  # fmt: skip
    with step("fp32: exporting, and its answers on the gate corpus (the reference)"):
        export(base, setup.fp32_path, setup)
        reference = run_batches(session(setup.fp32_path), batches)
    return dataclasses.replace(setup, reference=reference), base, texts


# --------------------------------------------------------------------------------- the table


COLUMNS = (
    ("variant", 26), ("cut", 6), ("params M", 9), ("nonzero M", 10), ("ONNX MB", 8),
    ("zip MB", 7), ("speed-up [range]", 19), ("mean cos", 9), ("min cos", 8),
    (f"top-{NEIGHBOURS}", 7), ("gate", 5),
)  # fmt: skip


def format_row(row: Row) -> str:
    speed = (
        f"{statistics.median(row.speedups):.2f} [{min(row.speedups):.2f}-{max(row.speedups):.2f}]"
    )
    cells = (
        row.name, f"{row.cut:.0%}", f"{row.params / 1e6:.2f}", f"{row.nonzero / 1e6:.2f}",
        f"{row.onnx_mb:.1f}", f"{row.zip_mb:.1f}", speed, f"{row.figures['mean_cosine']:.4f}",
        f"{row.figures['min_cosine']:.4f}", f"{row.figures['neighbour_overlap']:.3f}",
        "pass" if row.passes else "FAIL",
    )  # fmt: skip
    return " ".join(cell.ljust(width) for cell, (_, width) in zip(cells, COLUMNS, strict=True))


def table(rows: Sequence[Row]) -> str:
    header = " ".join(name.ljust(width) for name, width in COLUMNS)
    return "\n".join([header, "-" * len(header), *(format_row(row) for row in rows)])


def verdict(rows: Sequence[Row], min_speedup: float) -> list[str]:
    """What passes the gate with a real speed-up, and the failures that came close."""
    lines = []
    for row in rows[1:]:
        speed = statistics.median(row.speedups)
        if row.passes and speed >= min_speedup:
            lines.append(f"{row.name}: passes the gate at {speed:.2f}x")
        elif row.passes:
            lines.append(f"{row.name}: passes the gate but only {speed:.2f}x (< {min_speedup}x)")
        elif row.figures["mean_cosine"] >= CLOSE_COSINE:
            hint = ": a distillation pass might bring it over the gate" if row.cut else ""
            lines.append(f"{row.name}: close ({'; '.join(row.misses)}) at {speed:.2f}x{hint}")
    pruned = [r for r in rows if r.cut > 0]
    if not any(r.passes and statistics.median(r.speedups) >= min_speedup for r in pruned):
        lines.append(f"No pruned variant passes the gate with a speed-up >= {min_speedup}x.")
    return lines


# ---------------------------------------------------------------------------------- the run


MIN_GATE_TEXTS = 1000  # the gate is defined on a corpus of at least this many texts
SHARE = number_type(lambda v: 0 < v < 1, "a share between 0 and 1, both excluded")
HEADS_PER_LAYER = 12  # all-MiniLM-L6-v2's


def heads_removed(text: str) -> int:
    """An argparse type: heads removed per layer, leaving at least one."""
    count = whole_number(0)(text)
    if count >= HEADS_PER_LAYER:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected 0 to {HEADS_PER_LAYER - 1} (MiniLM has {HEADS_PER_LAYER} heads "
            "per layer)"
        )
    return count


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--unstructured",
        type=SHARE,
        nargs="*",
        default=[0.1, 0.3, 0.5],
        help="shares of encoder Linear weights zeroed (global L1)",
    )
    parser.add_argument(
        "--heads",
        type=heads_removed,
        nargs="*",
        default=[1, 2, 3],
        help="attention heads removed per layer (of 12)",
    )
    parser.add_argument(
        "--ffn",
        type=SHARE,
        nargs="*",
        default=[0.1, 0.25, 0.5],
        help="shares of FFN intermediate neurons removed per layer",
    )
    parser.add_argument(
        "--score",
        choices=("calibration", "weights"),
        default="calibration",
        help="how heads and neurons are ranked (see the module docstring)",
    )
    parser.add_argument(
        "--calibration",
        choices=("gate-like", "reference"),
        default="gate-like",
        help="where the calibration texts come from",
    )
    parser.add_argument("--calibration-texts", type=whole_number(1), default=256)
    parser.add_argument(
        "--texts", type=whole_number(MIN_GATE_TEXTS), default=1200, help="gate corpus size"
    )
    parser.add_argument("--max-seq-len", type=whole_number(4), default=256)
    parser.add_argument(
        "--rounds", type=whole_number(1), default=3, help="speed rounds per variant"
    )
    parser.add_argument(
        "--runs", type=whole_number(1), default=5, help="timed runs per graph per round"
    )
    parser.add_argument(
        "--min-speedup", type=number_type(lambda v: v > 0, "a ratio above 0"), default=1.1
    )
    parser.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure dynamic INT8 of fp32 and of the lightest cuts",
    )
    parser.add_argument(
        "--int8-fp32-nodes",
        type=whole_number(0),
        default=4,
        help="MatMuls left in fp32 in the INT8 rows (a build keeps only what its gate needs)",
    )
    parser.add_argument("--keep", type=Path, help="write the graphs here instead of a temp dir")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="pruning-") as scratch:
        workdir = args.keep or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        setup, base, gate_texts = prepare(args, workdir)
        captured = None
        if args.score == "calibration":
            with step(f"Calibration: {args.calibration_texts} {args.calibration} texts"):
                feeds = calibration_feeds(args, setup.tokenizer, setup.pad_id, gate_texts)
                captured = capture_inputs(base, feeds)
        with step("fp32 against itself (the noise of the speed figures)"):
            rows = [measure("fp32", setup.fp32_path, 0.0, setup, args)]
        fp32_nodes = int8_fp32_nodes(setup, args.int8_fp32_nodes) if args.int8 else None
        if fp32_nodes is not None:
            rows.append(int8_row("fp32", setup.fp32_path, 0.0, setup, args, fp32_nodes))
        for variant in variants(args, captured):
            rows += run_variant(variant, base, setup, args, fp32_nodes)
    print_report(rows, setup, args, time.perf_counter() - start)
    return 0


def print_report(
    rows: Sequence[Row], setup: Setup, args: argparse.Namespace, seconds: float
) -> None:
    speed_batch = setup.batches[len(setup.batches) // 2]["input_ids"].shape
    print()
    print(table(rows))
    print()
    print(
        f"Gate (Int8Gate, against unpruned fp32 on {len(setup.reference)} gate texts): mean "
        f"cosine >= {GATE.min_mean_cosine}, top-{NEIGHBOURS} overlap >= "
        f"{GATE.min_neighbour_overlap}. Speed-up: fp32 time / variant time on a batch of "
        f"{speed_batch[0]} x {speed_batch[1]} tokens, ONNX Runtime CPU, {os.cpu_count()} threads "
        f"for both, median of {args.rounds} rounds of {args.runs} alternating runs [min-max]."
    )
    print(
        f"cut: share of the encoder layers' Linear weights removed or zeroed. Ranking: "
        f"{args.score}"
        + (
            f" ({args.calibration_texts} {args.calibration} texts)"
            if args.score == "calibration"
            else ""
        )
        + ". No fine-tuning: every variant is the checkpoint cut as it is. "
        f"int8: dynamic, the {args.int8_fp32_nodes} MatMuls most sensitive to int8 in fp32."
    )
    for line in verdict(rows, args.min_speedup):
        print(f"- {line}")
    print(f"Wall time {seconds:.0f} s (gate batches of {BATCH}).")


if __name__ == "__main__":
    sys.exit(main())
