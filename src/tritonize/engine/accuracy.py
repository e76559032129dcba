"""Accuracy gates for reduced-precision graphs and engines, with per-precision tolerances.

The reference is always the fp32 ONNX graph on ONNX Runtime, itself validated against PyTorch.
Embeddings are compared by cosine similarity; classifiers by their labels and probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np
import tokenizers

from tritonize.engine.profiles import DecoderProfiles, ShapeProfile
from tritonize.errors import ValidationError
from tritonize.export.validation import SAMPLE_TEXTS, ValidationCase, encode_padded
from tritonize.progress import note
from tritonize.spec import Precision, Task
from tritonize.triton_models.classifier import softmax
from tritonize.triton_models.decoding import DecoderRuntime, DecoderSession

# fp32 decoder plans against ONNX Runtime: logits may differ by this much of the largest logit.
MAX_RELATIVE_LOGIT_DIFF = 1e-3

Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (input_ids, attention_mask) -> output


@dataclass(frozen=True)
class Tolerance:
    min_cosine: float  # embeddings, per row
    max_probability_diff: float  # classifiers, with identical labels


TOLERANCES = {
    Precision.FP32: Tolerance(min_cosine=0.99999, max_probability_diff=1e-3),
    Precision.FP16: Tolerance(min_cosine=0.999, max_probability_diff=1e-2),
    Precision.BF16: Tolerance(min_cosine=0.999, max_probability_diff=1e-2),
}


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
    if task is Task.EMBEDDING:
        cosine = _cosine(reference, actual)
        worst = float(cosine.min())
        misses = [
            f"{case}: row {i} cosine {c:.6f} < {tolerance.min_cosine}"
            for i, c in enumerate(cosine)
            if c < tolerance.min_cosine
        ]
        return misses, worst
    expected, got = softmax(reference), softmax(actual)
    worst = float(np.abs(expected - got).max())
    misses = [
        f"{case}: row {i} label {b} differs from reference label {a}"
        for i, (a, b) in enumerate(zip(expected.argmax(1), got.argmax(1), strict=True))
        if a != b
    ]
    if worst > tolerance.max_probability_diff:
        misses.append(f"{case}: probability diff {worst:.2e} > {tolerance.max_probability_diff}")
    return misses, worst


def gate(
    what: str,
    candidate: Runner,
    reference: Runner,
    cases: list[ValidationCase],
    task: Task,
    precision: Precision,
) -> dict[str, float]:
    """Run both on every case; raise one `ValidationError` listing every miss."""
    tolerance = TOLERANCES[precision]
    misses: list[str] = []
    figures: dict[str, float] = {}
    label = "min cosine" if task is Task.EMBEDDING else "max probability diff"
    for case in cases:
        expected = reference(case.input_ids, case.attention_mask)
        actual = candidate(case.input_ids, case.attention_mask)
        case_misses, figures[case.name] = compare(task, tolerance, case.name, expected, actual)
        misses += case_misses
        note(f"{case.name}: {label} {figures[case.name]:.6g}")
    if misses:
        raise ValidationError(f"{what} ({precision.value}) is not accurate enough", misses)
    return figures


def decoder_gate(
    candidate: DecoderRuntime, reference: DecoderRuntime, profiles: DecoderProfiles, vocab: int
) -> dict[str, float]:
    """Both runtimes through the serving code (`DecoderSession`): prefill at the profile's
    longest prompt, then a full batch of prompts from 1 token to the longest cache prefilled
    together and decoded twice (left-padded, at the profiles' max). Raise listing every miss."""
    rng = np.random.default_rng(0)
    window = profiles.context_window - 1
    lengths = [window, *np.linspace(window - 1, 1, profiles.max_batch).astype(int).tolist()]
    prompts = {key: rng.integers(0, vocab, n).tolist() for key, n in enumerate(lengths)}
    sessions = (DecoderSession(candidate), DecoderSession(reference))
    worst = {"prefill": 0.0, "decode": 0.0}
    misses: list[str] = []

    def check(kind: str, got: np.ndarray, expected: np.ndarray) -> None:
        if not np.isfinite(got).all():
            misses.append(f"{kind}: {int((~np.isfinite(got)).sum())} non-finite logits")
        scale = max(1.0, float(np.abs(expected).max()))
        worst[kind] = max(worst[kind], float(np.abs(got - expected).max()) / scale)

    longest, *batch = prompts  # the longest alone, then the others prefilled together
    for group in ([longest], batch):
        chosen: dict[Hashable, list[int]] = {key: prompts[key] for key in group}
        got, expected = (session.prefill(chosen) for session in sessions)
        check("prefill", got, expected)
    keys = batch
    tokens = rng.integers(0, vocab, len(keys)).tolist()
    agreement = []
    for _ in range(2):
        got, expected = (session.decode(keys, tokens) for session in sessions)
        check("decode", got, expected)
        agreement.append(float((got.argmax(1) == expected.argmax(1)).mean()))
        tokens = expected.argmax(1).tolist()
    for kind, diff in worst.items():
        note(f"{kind}: max logit diff {diff:.2e} of the largest logit")
        if diff > MAX_RELATIVE_LOGIT_DIFF:
            misses.append(f"{kind}: max logit diff {diff:.3g} > {MAX_RELATIVE_LOGIT_DIFF:g}")
    if misses:
        raise ValidationError("TensorRT decoder plan (fp32) is not accurate enough", misses)
    return {
        "prefill_max_relative_logit_diff": worst["prefill"],
        "decode_max_relative_logit_diff": worst["decode"],
        "decode_top1_agreement": min(agreement),
    }


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)
