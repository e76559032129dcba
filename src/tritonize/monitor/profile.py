"""The reference profile a build writes beside its model: the features of the traffic the
model is meant for (`--reference-texts`, or a built-in varied set of English texts), binned as
the serving steps bin live traffic. Drift is the distance between the two."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tritonize.errors import SpecError
from tritonize.progress import note, step
from tritonize.tasks.build import PredictionProfile
from tritonize.triton_models.features import (
    INPUT_FEATURES,
    OUTPUT_FEATURES,
    PROFILE,
    PROMPT_FEATURES,
    Profile,
    output_counts,
    prompt_counts,
    shares,
)

if TYPE_CHECKING:
    from tritonize.spec import BuildSpec
    from tritonize.tasks.build import EncoderBuild, Reference

MAX_REFERENCE_TEXTS = 5000  # enough for stable shares; the build runs PyTorch on each one
_BATCH = 32

# Sentences of the kinds of text models are served: support tickets, reviews, news, questions,
# instructions, chat, technical notes. The built-in set combines them into texts of varied
# length and form.
_SENTENCES = (
    "My order arrived two days late and the box was damaged.",
    "Can you tell me how to change the email address on my account?",
    "The hotel room was clean, quiet and close to the station.",
    "I would not recommend this blender, it stopped working after a week.",
    "The central bank left interest rates unchanged on Thursday.",
    "Heavy snow closed several mountain roads overnight.",
    "What is the difference between a virus and a bacterium?",
    "How long should I boil an egg for a soft yolk?",
    "Preheat the oven to 200 degrees and grease a baking tray.",
    "Click the settings icon, then choose privacy and security.",
    "Thanks for the quick reply, that solved my problem.",
    "Is the museum open on public holidays?",
    "The new phone has a brighter screen and a longer battery life.",
    "Customer service kept me on hold for forty minutes.",
    "Researchers found that regular exercise improves sleep quality.",
    "The city council approved a new bike lane along the river.",
    "Our team shipped the release after fixing the last critical bug.",
    "Please find the signed contract attached to this email.",
    "The concert was fantastic, the band played for almost three hours.",
    "I think the plot of the second season is weaker than the first.",
    "Where can I find the nearest pharmacy that is open late?",
    "The software update fails with a timeout on older laptops.",
    "Shares of the airline rose after it reported record summer traffic.",
    "Water the tomatoes in the morning so the leaves dry during the day.",
    "The delivery driver left the parcel with my neighbour.",
    "Could you recommend a good book about the history of science?",
    "The meeting has been moved to Friday at ten in the morning.",
    "This jacket is warm but the zip feels cheap.",
    "The striker was injured in training and will miss the final.",
    "Students will need a calculator for the second part of the exam.",
    "The refund should appear on your statement within five working days.",
    "A strong earthquake shook the coast, but no damage was reported.",
    "Why does my bread not rise when I use whole wheat flour?",
    "The app crashes every time I try to upload a photo.",
    "We are looking for a senior engineer to join our platform team.",
    "The view from the top of the hill was worth the long climb.",
    "Sales of electric cars doubled compared with last year.",
    "Remember to back up your files before installing the update.",
    "The staff were friendly, although the food took a while to arrive.",
    "How do I reset the router to its factory settings?",
)
_OPENINGS = ("", "", "", "", "Hi, ", "Question: ", "Update: ", "Review: ", "Note: ")


def builtin_reference_texts(count: int = 600, seed: int = 0) -> list[str]:
    """`count` distinct texts of one to five sentences (about 8 to 120 tokens)."""
    rng = random.Random(seed)
    texts: list[str] = []
    seen: set[str] = set()
    while len(texts) < count:
        sentences = rng.sample(_SENTENCES, rng.choice((1, 1, 1, 2, 2, 3, 5)))
        text = rng.choice(_OPENINGS) + " ".join(sentences)
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


def read_reference_texts(path: Path | None, warn: bool = True) -> tuple[list[str], str]:
    """(the reference texts, where they came from): one text per non-blank line of `path`,
    at most MAX_REFERENCE_TEXTS of them, or the built-in set. Too few are refused; fewer than
    drift's smallest window are warned about (`warn`)."""
    if path is None:
        return builtin_reference_texts(), "built-in"
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"reference_texts: cannot read {path}: {exc}") from exc
    texts = [line.strip() for line in lines if line.strip()][:MAX_REFERENCE_TEXTS]
    if len(texts) < 50:
        raise SpecError(
            f"reference_texts: {path} has {len(texts)} non-blank lines; expected at least 50 "
            "texts (one per line) for stable shares"
        )
    from tritonize.monitor.drift import MIN_OBSERVATIONS  # here: it brings the Prometheus client

    if warn and len(texts) < MIN_OBSERVATIONS:
        # PSI's sampling noise is about (bins - 1) * (1/reference + 1/live): at 50 reference texts
        # an 11-bin feature sits near its threshold under traffic just like the reference.
        note(
            f"warning: {len(texts)} reference texts make drift noisy; at least "
            f"{MIN_OBSERVATIONS} (drift's smallest live window) keep false alarms rare"
        )
    return texts, str(path)


def build_profile(spec: BuildSpec, reference: Reference, build: EncoderBuild) -> Profile:
    """The reference profile of an encoder task: input features from the tokenizer step's own
    encoding, prediction features from PyTorch's outputs."""
    from tritonize.triton_models.tokenizer import TextTokenizer

    texts, source = read_reference_texts(spec.reference_texts)
    with step(f"Profiling {len(texts)} reference texts ({source})"):
        tokenizer = TextTokenizer(reference.own_tokenizer(), spec.max_seq_len, reference.pad_id)
        counts = {f.name: np.zeros(len(f.bins), dtype=np.int64) for f in INPUT_FEATURES}
        outputs = []
        for start in range(0, len(texts), _BATCH):
            chunk = texts[start : start + _BATCH]
            (batch,) = tokenizer.encode([chunk])
            for name, value in tokenizer.feature_counts([(chunk, batch)]).items():
                counts[name] += value
            if build.profiles_predictions:
                outputs.append(reference.run_graph(batch.tensors(reference.graph_inputs)))
        predictions = (
            build.prediction_profile(np.concatenate(outputs), reference.labels)
            if outputs
            else PredictionProfile()
        )
    features = (*INPUT_FEATURES, *predictions.features)
    every = {**counts, **predictions.counts}
    return Profile(
        features=features,
        shares={f.name: shares(every[f.name]) for f in features},
        texts=len(texts),
        source=source,
        centroid=predictions.centroid,
    )


# Prompts a build generates for (greedily, at the generator's default max_tokens) to profile
# output lengths and stop reasons: each costs a whole generation in PyTorch.
GENERATION_PROFILE_PROMPTS = 32


def build_generation_profile(
    spec: BuildSpec, model: Any, tokenizer: Any, end_ids: list[int]
) -> Profile:
    """The reference profile of a generator: prompt features over every reference text,
    output tokens and stop reasons from Hugging Face `generate` on the first
    GENERATION_PROFILE_PROMPTS of them."""
    from tritonize.export.decoders import greedy_continuations
    from tritonize.triton_models.generation import REQUEST_DEFAULTS

    texts, source = read_reference_texts(spec.reference_texts)
    window, max_tokens = spec.max_seq_len, REQUEST_DEFAULTS["max_tokens"]
    assert isinstance(max_tokens, int)
    with step(f"Profiling {len(texts)} reference prompts ({source})"):
        lengths = [len(tokenizer.encode(text).ids) for text in texts]
        counts = prompt_counts(texts, lengths)
        prompts = [t for t, n in zip(texts, lengths, strict=True) if n < window]
        generated = greedy_continuations(
            model, tokenizer, end_ids, window, prompts[:GENERATION_PROFILE_PROMPTS], max_tokens
        )
        reasons = [_stop_reason(g, max_tokens) for g in generated]
        counts |= output_counts([len(g["tokens"]) for g in generated], reasons)
    features = (*PROMPT_FEATURES, *OUTPUT_FEATURES)
    return Profile(features, {f.name: shares(counts[f.name]) for f in features}, len(texts), source)


def _stop_reason(continuation: dict[str, Any], max_tokens: int) -> str:
    """Why `generate` stopped, as the generator names it: all the tokens it was allowed (the
    request's, or fewer where the window was full), or an end id before that."""
    if len(continuation["tokens"]) < continuation["max_tokens"]:
        return "end"
    return "max_tokens" if continuation["max_tokens"] == max_tokens else "window"


def write_profile(directory: Path, profile: Profile) -> Path:
    path = directory / PROFILE
    path.write_text(json.dumps(profile.to_json(), ensure_ascii=False, indent=1) + "\n")
    return path
