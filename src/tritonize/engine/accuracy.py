"""Accuracy gates for reduced-precision graphs and engines, with per-precision tolerances.

The reference is always the fp32 ONNX graph on ONNX Runtime, itself validated against PyTorch.
Embeddings are compared by cosine similarity; classifiers by their labels and probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np
import tokenizers

from tritonize.engine.profiles import DecoderProfiles, ShapeProfile
from tritonize.errors import ValidationError
from tritonize.export.validation import SAMPLE_TEXTS, ValidationCase, encode_padded
from tritonize.progress import note
from tritonize.spec import Precision, Task
from tritonize.tasks import task_named
from tritonize.tasks.build import EncoderBuild
from tritonize.tasks.tolerances import GATE_TOLERANCES, GateTolerance
from tritonize.triton_models.decoding import DecoderRuntime, DecoderSession
from tritonize.triton_models.generation import usable_window

# Decoders against the fp32 graph on ONNX Runtime: how far logits may be, as a share of the
# largest logit (typed fp16 / bf16 decoders measured 1e-3 to 5e-3 / about 1e-2 on CPU).
MAX_RELATIVE_LOGIT_DIFF = {Precision.FP32: 1e-3, Precision.FP16: 2e-2, Precision.BF16: 5e-2}

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]  # the graph's feeds by name -> output


# The gate's view of the one tolerance table.
Tolerance = GateTolerance
TOLERANCES = GATE_TOLERANCES


def cases_at_profile(
    tokenizer: tokenizers.Tokenizer, profile: ShapeProfile, pad_id: int
) -> list[ValidationCase]:
    """Real text, cut or padded to exactly the profile's min, opt and max shapes."""
    cases = []
    for name, (batch, seq) in profile.named().items():
        texts = [" ".join(SAMPLE_TEXTS[i:] + SAMPLE_TEXTS[:i]) * 4 for i in range(batch)]
        if batch > 1:  # mixed lengths, so that padding is exercised too
            texts[-1] = SAMPLE_TEXTS[0]
        ids, mask = encode_padded(tokenizer, texts, seq, pad_id)
        width = ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, seq - width)), constant_values=pad_id)[:, :seq]
        mask = np.pad(mask, ((0, 0), (0, seq - width)))[:, :seq]
        cases.append(ValidationCase(f"{name} shape {batch}x{seq}", ids, mask))
    return cases


def compare(
    task: Task, tolerance: Tolerance, case: str, reference: np.ndarray, actual: np.ndarray
) -> tuple[list[str], float]:
    """(every miss, the figure compared: worst cosine or worst probability difference)."""
    if actual.shape != reference.shape:
        return [f"{case}: shape {actual.shape}, expected {reference.shape}"], float("nan")
    if not np.isfinite(actual).all():
        return [f"{case}: {int((~np.isfinite(actual)).sum())} non-finite values"], float("nan")
    return _encoder_build(task).gate_compare(tolerance, case, reference, actual)


def _encoder_build(task: Task) -> EncoderBuild:
    build = task_named(task.value).build
    assert isinstance(build, EncoderBuild), f"{task.value} has no encoder gate"
    return build


def gate(
    what: str,
    candidate: Runner,
    reference: Runner,
    cases: list[ValidationCase],
    task: Task,
    precision: Precision,
    graph_inputs: tuple[str, ...] = ("input_ids", "attention_mask"),
) -> dict[str, float]:
    """Run both on every case; raise one `ValidationError` listing every miss."""
    tolerance = TOLERANCES[precision]
    misses: list[str] = []
    figures: dict[str, float] = {}
    label = _encoder_build(task).gate_figure
    for case in cases:
        feeds = case.feeds(graph_inputs)
        expected, actual = reference(feeds), candidate(feeds)
        case_misses, figures[case.name] = compare(task, tolerance, case.name, expected, actual)
        misses += case_misses
        note(f"{case.name}: {label} {figures[case.name]:.6g}")
    if misses:
        raise ValidationError(f"{what} ({precision.value}) is not accurate enough", misses)
    return figures


def decoder_gate(
    what: str,
    candidate: DecoderRuntime,
    reference: DecoderRuntime,
    profiles: DecoderProfiles,
    vocab: int,
    precision: Precision,
) -> dict[str, float]:
    """Both runtimes through the serving code (`DecoderSession`), at each profile's limits:
    a prompt of the full window alone; a long prompt alone and a full batch of short ones
    prefilled together; then that whole batch decoded twice (left-padded up to the longest
    cache). Raise one `ValidationError` listing every miss."""
    rng = np.random.default_rng(0)
    window = usable_window(profiles.context_window)
    short = [1 + i % min(16, window - 2) for i in range(profiles.max_batch - 1)]
    groups = [g for g in ([window], [window - 2], short) if g]  # one prefill call per group
    prompts: list[dict[Hashable, list[int]]] = []
    for lengths in groups:
        first = sum(len(group) for group in prompts)
        prompts.append(
            {first + i: rng.integers(0, vocab, n).tolist() for i, n in enumerate(lengths)}
        )
    sessions = (DecoderSession(candidate), DecoderSession(reference))
    worst = {"prefill": 0.0, "decode": 0.0}
    misses: list[str] = []

    def check(kind: str, got: np.ndarray, expected: np.ndarray) -> None:
        if not np.isfinite(got).all():
            misses.append(f"{kind}: {int((~np.isfinite(got)).sum())} non-finite logits")
        scale = max(1.0, float(np.abs(expected).max()))
        worst[kind] = max(worst[kind], float(np.abs(got - expected).max()) / scale)

    for group in prompts:
        got, expected = (session.prefill(group) for session in sessions)
        check("prefill", got, expected)
    keys = [key for group in prompts[1:] for key in group]  # the full-window prompt stays out
    tokens = rng.integers(0, vocab, len(keys)).tolist()
    agreement = []
    for _ in range(2):
        got, expected = (session.decode(keys, tokens) for session in sessions)
        check("decode", got, expected)
        agreement.append(float((got.argmax(1) == expected.argmax(1)).mean()))
        tokens = expected.argmax(1).tolist()
    tolerance = MAX_RELATIVE_LOGIT_DIFF[precision]
    for kind, diff in worst.items():
        note(f"{kind}: max logit diff {diff:.2e} of the largest logit")
        if diff > tolerance:
            misses.append(f"{kind}: max logit diff {diff:.3g} > {tolerance:g}")
    if misses:
        raise ValidationError(f"{what} ({precision.value}) is not accurate enough", misses)
    return {
        "prefill_max_relative_logit_diff": worst["prefill"],
        "decode_max_relative_logit_diff": worst["decode"],
        "decode_top1_agreement": min(agreement),
    }
