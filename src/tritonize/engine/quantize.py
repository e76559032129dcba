"""INT8 graphs for CPU targets: ONNX Runtime quantization held to a task-level gate.

Both of ONNX Runtime's modes are tried: dynamic (weights int8, activations quantized per call)
and static (QDQ, activation ranges calibrated on texts). Each MatMul's sensitivity is measured
first: the relative error its output takes when its own input and weight are rounded to int8,
on real activations of the fp32 graph. The most sensitive nodes are then left in fp32, a
growing number at a time, until the gate passes against the fp32 graph on the gate corpus.
Static is searched only up to the fp32 nodes dynamic needed (with more it could not be
faster); the faster passing graph wins, and a build where nothing passes is refused.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from tritonize.errors import ValidationError
from tritonize.progress import note, step
from tritonize.spec import Task

Feeds = dict[str, np.ndarray]
BATCH = 32  # gate batches: texts of similar length together, so padding stays small
NEIGHBOURS = 10
SPEED_RUNS = 7
CALIBRATION_TEXTS = 64
MODES = ("dynamic", "static")


@dataclass(frozen=True)
class Int8Gate:
    """What an int8 graph must keep of the fp32 graph's answers on the gate corpus."""

    min_mean_cosine: float = 0.99  # embeddings: mean cosine per text
    min_neighbour_overlap: float = 0.9  # embeddings: mean shared top-10 nearest neighbours
    min_label_agreement: float = 0.99  # classifiers: share of texts given the same label
    max_probability_diff: float = 0.02  # classifiers: worst probability difference


@dataclass(frozen=True)
class Int8Result:
    """The graph that passed, and what the manifest records about it."""

    path: Path
    mode: str
    excluded: tuple[str, ...]
    figures: dict[str, float]
    speedup: float
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        return {
            "int8": {
                "mode": self.mode,
                "fp32_nodes": list(self.excluded),
                "speedup_vs_fp32": round(self.speedup, 3),
                "attempts": self.attempts,
            },
            "accuracy_gate": self.figures,
        }


# ---------------------------------------------------------------------------- the gate corpus

_SENTENCES = {
    "en": (
        "The train to the airport leaves every twenty minutes.",
        "Our quarterly revenue grew by 12% while costs stayed flat.",
        "Please reset my password, the link in the email has expired.",
        "The patient reported mild headaches after the second dose.",
        "A transformer encoder maps each token to a contextual vector.",
        "The recipe needs two eggs, a cup of flour and some butter.",
        "Rain is expected over the weekend, with strong winds on Sunday.",
        "I loved the film, although the ending felt rushed.",
        "The court postponed the hearing until next month.",
        "Install the package, then restart the server to apply the change.",
        "Volcanic soil is rich in minerals and holds water well.",
        "The striker scored twice in the last ten minutes of the match.",
    ),
    "de": (
        "Der Zug nach Berlin hat heute leider zwanzig Minuten Verspätung.",
        "Bitte senden Sie mir die Rechnung bis Ende der Woche.",
        "Die Forschung zeigt, dass Schlaf das Gedächtnis stärkt.",
        "Im Winter wird es in den Bergen schnell dunkel und kalt.",
    ),
    "fr": (
        "Le musée est fermé le lundi mais ouvert tard le jeudi.",
        "Nous avons réservé une table pour quatre personnes à vingt heures.",
        "La nouvelle loi entrera en vigueur au début de l'année prochaine.",
        "Le chat dort sur le canapé depuis ce matin.",
    ),
    "es": (
        "¿Dónde está la estación de autobuses más cercana?",
        "El informe anual se publicará la próxima semana.",
        "La temperatura bajó diez grados durante la noche.",
        "Mi abuela cultiva tomates y pimientos en su jardín.",
    ),
    "zh": (
        "今天天气很好，我们去公园散步吧。",
        "机器学习模型的部署需要监控延迟和吞吐量。",
        "这家餐厅的面条非常好吃，价格也不贵。",
    ),
    "ja": (
        "東京は日本の首都です。",
        "新しいスマートフォンは来月発売される予定です。",
        "駅の近くに小さな本屋があります。",
    ),
    "ru": (
        "Привет, как дела? Всё хорошо.",
        "Библиотека открыта с девяти утра до восьми вечера.",
        "Завтра ожидается сильный снегопад.",
    ),
    "ar": ("مرحبا بالعالم", "المكتبة مفتوحة حتى الساعة الثامنة مساء."),
    "other": (
        "한국어 문장도 잘 처리되어야 합니다.",
        "Café, naïve, façade, jalapeño, Ångström.",
        "Emoji survive tokenization 🚀🔥😀",
        "3.14159 is pi and 2.71828 is e; 42 is the answer.",
        "<html><body>markup &amp; entities</body></html>",
        "def add(a, b): return a + b  # a tiny function",
        "Error 503: service unavailable, retry after 30 s.",
        "ok",
    ),
}
_OPENINGS = ("", "", "", "Note: ", "Q: ", "Update - ", "FYI, ", "Summary: ", "> ")


def gate_corpus(count: int = 1200, seed: int = 0) -> list[str]:
    """`count` distinct texts of one to seven sentences, from several languages and topics:
    one-word texts up to paragraphs of about 150 tokens, single-language and mixed."""
    rng = random.Random(seed)
    languages = list(_SENTENCES)
    pool = [s for group in _SENTENCES.values() for s in group]
    texts: list[str] = []
    seen: set[str] = set()
    while len(texts) < count:
        sentences = rng.choice([1, 1, 2, 2, 3, 4, 5, 7])
        if rng.random() < 0.6:  # one language: its neighbours are texts that share topics
            group = _SENTENCES[rng.choice(languages)]
            chosen = [rng.choice(group) for _ in range(sentences)]
        else:
            chosen = [rng.choice(pool) for _ in range(sentences)]
        text = rng.choice(_OPENINGS) + " ".join(chosen)
        if rng.random() < 0.2:
            text = f"{text} ({rng.randint(1, 9999)})"
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


def encode_batches(
    tokenizer: tokenizers.Tokenizer,
    texts: list[str],
    max_len: int,
    pad_id: int,
    graph_inputs: tuple[str, ...],
) -> tuple[list[Feeds], np.ndarray]:
    """The texts as the graph's feeds, sorted by length into batches of `BATCH`; and the order
    (row `i` of the concatenated outputs is text `order[i]`)."""
    encodings = [tokenizer.encode(text) for text in texts]
    lengths = [min(len(e.ids), max_len) for e in encodings]
    order = np.argsort(lengths, kind="stable")
    batches = []
    for start in range(0, len(order), BATCH):
        rows = order[start : start + BATCH]
        width = max(lengths[i] for i in rows)
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for row, index in enumerate(rows):
            tokens = encodings[index].ids[: lengths[index]]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        named = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        batches.append({name: named[name] for name in graph_inputs})
    return batches, order


# ----------------------------------------------------------------------------------- sessions


def session(path: Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_batches(sess: Any, batches: list[Feeds]) -> np.ndarray:
    """The graph's first output for every batch, concatenated (pooled outputs only)."""
    return np.concatenate([sess.run(None, feeds)[0] for feeds in batches]).astype(np.float32)


# -------------------------------------------------------------------------------- the figures


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def neighbours(unit_rows: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Each row's `k` nearest other rows by cosine, as indices."""
    similarity = unit_rows @ unit_rows.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argpartition(-similarity, k, axis=1)[:, :k]


def embedding_figures(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    ref, got = _unit(reference), _unit(candidate)
    cosine = (ref * got).sum(axis=1)
    ref_nn, got_nn = neighbours(ref), neighbours(got)
    overlap = [len(set(a) & set(b)) / NEIGHBOURS for a, b in zip(ref_nn, got_nn, strict=True)]
    return {
        "mean_cosine": float(cosine.mean()),
        "min_cosine": float(cosine.min()),
        "neighbour_overlap": float(np.mean(overlap)),
    }


def classification_figures(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    expected, got = _softmax(reference), _softmax(candidate)
    return {
        "label_agreement": float((expected.argmax(1) == got.argmax(1)).mean()),
        "max_probability_diff": float(np.abs(expected - got).max()),
    }


def figures_for(task: Task, reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    if not np.isfinite(candidate).all():
        return {"non_finite_values": float((~np.isfinite(candidate)).sum())}
    if task is Task.EMBEDDING:
        return embedding_figures(reference, candidate)
    return classification_figures(reference, candidate)


def gate_misses(task: Task, figures: dict[str, float], limits: Int8Gate) -> list[str]:
    """Every figure on the wrong side of its limit, named."""
    if "non_finite_values" in figures:
        return [f"{int(figures['non_finite_values'])} non-finite values"]
    if task is Task.EMBEDDING:
        checks = [
            ("mean cosine to fp32", figures["mean_cosine"], ">=", limits.min_mean_cosine),
            (
                f"top-{NEIGHBOURS} neighbour overlap",
                figures["neighbour_overlap"], ">=", limits.min_neighbour_overlap,
            ),
        ]  # fmt: skip
    else:
        checks = [
            ("label agreement", figures["label_agreement"], ">=", limits.min_label_agreement),
            (
                "max probability diff",
                figures["max_probability_diff"], "<=", limits.max_probability_diff,
            ),
        ]  # fmt: skip
    return [
        f"{name} {value:.4f}, expected {sign} {limit}"
        for name, value, sign, limit in checks
        if (value < limit if sign == ">=" else value > limit)
    ]


# ------------------------------------------------------------------------------- sensitivity


def weight_matmuls(model: Any) -> list[tuple[str, str, str]]:
    """(node name, activation input, weight initializer) of each MatMul/Gemm with a weight."""
    weights = {init.name for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) >= 2:
            activation, weight = node.input[0], node.input[1]
            if weight in weights and activation not in weights:
                found.append((node.name, activation, weight))
    return found


def _transposed_weights(model: Any) -> set[str]:
    """Weights a Gemm reads transposed (transB = 1), stored [out, in]."""
    return {
        node.input[1]
        for node in model.graph.node
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute)
    }


def _fake_quantize(values: np.ndarray, symmetric: bool) -> np.ndarray:
    """`values` rounded through 8 bits: a weight int8 symmetric with a scale per output
    column, an activation uint8 with one scale for the tensor (as dynamic quantization does)."""
    if symmetric:
        scale = np.maximum(np.abs(values).max(axis=0, keepdims=True), 1e-12) / 127
        return np.clip(np.round(values / scale), -127, 127) * scale
    low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    scale = max(high - low, 1e-12) / 255
    zero = np.round(-low / scale)
    return (np.clip(np.round(values / scale) + zero, 0, 255) - zero) * scale


def sensitivity(source: Path, batches: list[Feeds], workdir: Path) -> list[tuple[str, float]]:
    """Each weight MatMul with the relative error int8 gives its output on real activations,
    worst first."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    nodes = weight_matmuls(model)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for name in _transposed_weights(model):
        weights[name] = weights[name].T
    known = {o.name for o in model.graph.output}
    for _, activation, _ in nodes:
        if activation not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(activation))
            known.add(activation)
    probe = workdir / "sensitivity.onnx"
    onnx.save(model, str(probe), save_as_external_data=True, location="sensitivity.onnx.data")
    sess = session(probe)
    names = [o.name for o in sess.get_outputs()]
    captured = dict(zip(names, sess.run(None, batches[0]), strict=True))
    for feeds in batches[1:]:  # a few batches of different lengths, flattened to rows
        for name, value in zip(names, sess.run(None, feeds), strict=True):
            captured[name] = np.concatenate(
                [captured[name].reshape(-1, captured[name].shape[-1]),
                 value.reshape(-1, value.shape[-1])]
            )  # fmt: skip
    errors = []
    for name, activation, weight in nodes:
        x = captured[activation].reshape(-1, captured[activation].shape[-1])
        w = weights[weight]
        exact = x @ w
        rounded = _fake_quantize(x, symmetric=False) @ _fake_quantize(w, symmetric=True)
        errors.append((name, float(np.linalg.norm(rounded - exact) / np.linalg.norm(exact))))
    return sorted(errors, key=lambda pair: -pair[1])


def exclusion_steps(ranked: list[str]) -> Iterator[tuple[str, ...]]:
    """None left in fp32, then the 1, 2, 4, ... most sensitive, up to half of `ranked` (past
    that, int8 would not pay for itself)."""
    count = 0
    while count <= len(ranked) // 2:
        yield tuple(ranked[:count])
        count = 1 if count == 0 else count * 2


# ------------------------------------------------------------------------------ quantization


class _Calibration:
    """ONNX Runtime's calibration reader over prepared feeds."""

    def __init__(self, batches: list[Feeds]) -> None:
        self.batches = iter(batches)

    def get_next(self) -> Feeds | None:
        return next(self.batches, None)

    def rewind(self) -> None:  # pragma: no cover - the MinMax calibrator reads once
        pass


def quantize(
    source: Path, target: Path, mode: str, excluded: tuple[str, ...], calibration: list[Feeds]
) -> Path:
    """`source` quantized to int8 in `mode`, the `excluded` nodes left in fp32."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    common: dict[str, Any] = {
        "op_types_to_quantize": ["MatMul", "Gemm"],
        "nodes_to_exclude": list(excluded),
        "use_external_data_format": False,
        "per_channel": True,  # one scale per output column: per tensor loses far more
    }
    if mode == "dynamic":
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, **common)
    else:
        nodes = [name for name, _, _ in weight_matmuls(_load(source))]
        quantize_static(
            source, target, _Calibration(calibration),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            nodes_to_quantize=[n for n in nodes if n not in excluded], **common,
        )  # fmt: skip
    return target


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False)


def measure_speedup(fp32: Path, int8: Path, feeds: Feeds, runs: int = SPEED_RUNS) -> float:
    """fp32 time over int8 time: same threads, same batch, warm-up excluded, the two timed in
    turn (so that load from elsewhere on the machine hits both alike), medians compared."""
    sessions = [session(fp32), session(int8)]
    for sess in sessions:
        sess.run(None, feeds)
    times: list[list[float]] = [[], []]
    for _ in range(runs):
        for sess, spent in zip(sessions, times, strict=True):
            start = time.perf_counter()
            sess.run(None, feeds)
            spent.append(time.perf_counter() - start)
    return statistics.median(times[0]) / statistics.median(times[1])


# ----------------------------------------------------------------------------------- the build


@dataclass
class _Search:
    source: Path
    workdir: Path
    task: Task
    limits: Int8Gate
    batches: list[Feeds]
    reference: np.ndarray
    calibration: list[Feeds]
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def first_passing(
        self, mode: str, ranked: list[str]
    ) -> tuple[Path, tuple[str, ...], dict[str, float]] | None:
        """The first graph of `mode` along the exclusion steps that passes, if any."""
        for excluded in exclusion_steps(ranked):
            path = self.workdir / f"model.int8.{mode}.{len(excluded)}.onnx"
            quantize(self.source, path, mode, excluded, self.calibration)
            figures = figures_for(
                self.task, self.reference, run_batches(session(path), self.batches)
            )
            misses = gate_misses(self.task, figures, self.limits)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in figures.items())
            note(f"{mode}, {len(excluded)} MatMul(s) in fp32: {shown}"
                 + (f" - {'; '.join(misses)}" if misses else " - passes"))  # fmt: skip
            self.attempts.append(
                {"mode": mode, "fp32_nodes": len(excluded), "figures": figures, "misses": misses}
            )
            if not misses:
                return path, excluded, figures
        return None


def build_int8(
    source: Path,
    workdir: Path,
    task: Task,
    tokenizer: tokenizers.Tokenizer,
    pad_id: int,
    max_seq_len: int,
    graph_inputs: tuple[str, ...],
    limits: Int8Gate | None = None,
    corpus: list[str] | None = None,
) -> Int8Result:
    """The fastest int8 graph of `source` that passes the gate; `ValidationError` when none."""
    if task not in (Task.EMBEDDING, Task.CLASSIFICATION):
        raise ValueError(f"int8 has no gate for task {task.value}")
    limits = limits or Int8Gate()
    texts = corpus or gate_corpus()
    batches, _ = encode_batches(tokenizer, texts, max_seq_len, pad_id, graph_inputs)
    with step(f"fp32 reference on the gate corpus ({len(texts)} texts)"):
        reference = run_batches(session(source), batches)
    calibration = _spread(batches, CALIBRATION_TEXTS // BATCH)
    with step("Measuring each MatMul's sensitivity to int8"):
        ranked = sensitivity(source, calibration, workdir)
        for name, error in ranked[:3]:
            note(f"{name}: relative error {error:.3g}")
    search = _Search(source, workdir, task, limits, batches, reference, calibration)
    passing: list[tuple[float, str, Path, tuple[str, ...], dict[str, float]]] = []
    speed_batch = batches[len(batches) // 2]
    names = [name for name, _ in ranked]
    for mode in MODES:
        with step(f"INT8 {mode}: leaving the most sensitive MatMuls in fp32 until the gate passes"):
            found = search.first_passing(mode, names)
            if found is None:
                continue
            path, excluded, figures = found
            speedup = measure_speedup(source, path, speed_batch)
            note(f"speed-up over fp32 {speedup:.2f}x (batch {speed_batch['input_ids'].shape})")
            passing.append((speedup, mode, path, excluded, figures))
            # A later mode must pass with no more fp32 nodes to have a chance of being faster.
            names = names[: max(len(excluded) * 2, 1)]
    if not passing:
        last = {a["mode"]: a["misses"] for a in search.attempts}
        raise ValidationError(
            f"INT8 ({task.value}) is not accurate enough with up to half of the MatMuls in "
            "fp32: build fp32 instead",
            [f"{mode}: {miss}" for mode, misses in last.items() for miss in misses],
        )
    speedup, mode, path, excluded, figures = max(passing, key=lambda p: p[0])
    return Int8Result(path, mode, excluded, figures, speedup, search.attempts)


def _spread(batches: list[Feeds], count: int) -> list[Feeds]:
    """`count` batches spread over the lengths (shortest to longest)."""
    count = max(1, min(count, len(batches)))
    picks = np.linspace(0, len(batches) - 1, count).round().astype(int)
    return [batches[i] for i in sorted(set(picks))]
