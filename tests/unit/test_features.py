"""Traffic features and the reference profile a build writes, against independent references:
Unicode's own character names, transformers' tokenizer and classifier."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from tritonize.errors import SpecError
from tritonize.monitor.drift import MIN_OBSERVATIONS, recording_rules
from tritonize.monitor.profile import builtin_reference_texts, read_reference_texts
from tritonize.repository.writer import build_repository
from tritonize.spec import BuildSpec
from tritonize.tasks.build import StepNames
from tritonize.triton_models.features import (
    CENTROID_COSINE,
    INPUT_FEATURES,
    OUTPUT_TOKENS,
    PROFILE,
    PROMPT_TOKENS,
    SCRIPTS,
    STOP_REASONS,
    TVD,
    Feature,
    Profile,
    numeric,
    script_of,
    shares,
)

MONITORING = Path(__file__).parents[2] / "monitoring"
# Unicode names' first word -> the script a letter is counted in.
_NAMED = {
    "LATIN": "latin", "GREEK": "greek", "CYRILLIC": "cyrillic", "HEBREW": "hebrew",
    "ARABIC": "arabic", "DEVANAGARI": "devanagari", "THAI": "thai", "HANGUL": "hangul",
    "HIRAGANA": "kana", "KATAKANA": "kana", "CJK": "han",
}  # fmt: skip


def _script_by_name(char: str) -> str | None:
    """The script of a letter by its Unicode name; None for what is not a letter."""
    if not unicodedata.category(char).startswith("L"):
        return None
    return _NAMED.get(unicodedata.name(char, "").split(" ")[0], "other")


def test_letters_of_the_common_blocks_are_counted_in_their_script() -> None:
    blocks = [(0x20, 0x24F), (0x370, 0x52F), (0x590, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F),
              (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAFFF)]  # fmt: skip
    chars = [chr(c) for first, last in blocks for c in range(first, last + 1)]
    chars = [c for c in chars if unicodedata.name(c, "")]
    got = script_of(np.array([ord(c) for c in chars]))
    expected = [_script_by_name(c) for c in chars]
    wrong = [
        (c, want, SCRIPTS[g] if g < len(SCRIPTS) else None)
        for c, want, g in zip(chars, expected, got, strict=True)
        if want is not None and (g >= len(SCRIPTS) or SCRIPTS[g] != want)
    ]
    assert len(wrong) <= 0.01 * len(chars), wrong[:20]


def test_digits_punctuation_spaces_and_emoji_are_no_script() -> None:
    points = np.array([ord(c) for c in "0 9,.!?-_()[]{}\n\t—“”…、。！🚀😀"])
    assert (script_of(points) == len(SCRIPTS)).all()


def _expected_bin(edges: tuple[float, ...], value: float) -> int:
    return next((i for i, edge in enumerate(edges) if value <= edge), len(edges))


def test_input_counts_match_transformers_tokenizer(minilm_dir: Path) -> None:
    from transformers import AutoTokenizer

    from tritonize.triton_models.tokenizer import TextTokenizer

    texts = [*builtin_reference_texts(40), "Привет, мир! " * 20, "def f(x): return {x: [1, 2]}"]
    step = TextTokenizer.from_file(minilm_dir / "tokenizer.json", max_seq_len=32, pad_id=0)
    (batch,) = step.encode([texts])
    counts = step.feature_counts([(texts, batch)])

    reference = AutoTokenizer.from_pretrained(str(minilm_dir))
    full = [len(ids) for ids in reference(texts)["input_ids"]]
    tokens = [min(n, 32) for n in full]
    edges = INPUT_FEATURES[0].edges
    assert (
        counts["tokens"].tolist()
        == np.bincount([_expected_bin(edges, n) for n in tokens], minlength=len(edges) + 1).tolist()
    )
    assert counts["truncated"].tolist() == [sum(n <= 32 for n in full), sum(n > 32 for n in full)]
    letters = [_script_by_name(c) for text in texts for c in text]
    assert counts["script"][SCRIPTS.index("cyrillic")] == letters.count("cyrillic")
    assert counts["script"][SCRIPTS.index("latin")] == letters.count("latin")
    assert counts["symbols"].sum() == len(texts)
    # The code has the most symbols: it lands in a higher bin than every English text.
    assert np.flatnonzero(counts["symbols"]).max() >= 3


def test_unknown_tokens_are_counted_per_text(minilm_dir: Path) -> None:
    from tritonize.triton_models.tokenizer import TextTokenizer

    step = TextTokenizer.from_file(minilm_dir / "tokenizer.json", max_seq_len=64, pad_id=0)
    texts = ["plain english words", "\U00013000\U00013001\U00013002 \U00013003"]  # hieroglyphs
    (batch,) = step.encode([texts])
    unknown = step.feature_counts([(texts, batch)])["unknown_tokens"]
    assert unknown[0] == 1 and unknown[-1] == 1  # none; then every word unknown (> 0.2)


def test_numeric_bins_are_closed_above() -> None:
    feature = numeric("f", "input", (1, 2))
    assert feature.bins == ("<=1", "<=2", ">2")
    assert feature.count(np.array([0, 1, 1.5, 2, 3])).tolist() == [2, 2, 1]


def test_the_reference_set_is_large_varied_and_read_from_a_file(tmp_path: Path) -> None:
    texts, source = read_reference_texts(None)
    assert source == "built-in" and len(texts) == len(set(texts)) >= 500
    assert len({len(t.split()) for t in texts}) >= 30
    path = tmp_path / "reference.txt"
    path.write_text("\n".join(["a text"] * 60 + ["", "  "]))
    assert read_reference_texts(path) == (["a text"] * 60, str(path))
    path.write_text("too\nfew\n")
    with pytest.raises(SpecError, match="reference_texts: .* has 2 non-blank lines"):
        read_reference_texts(path)


def test_a_reference_smaller_than_a_drift_window_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reference's own sampling noise adds to the live window's: a small one alarms."""
    path = tmp_path / "reference.txt"
    path.write_text("\n".join(["a text"] * 60))
    read_reference_texts(path)
    assert re.search(r"warning: 60 reference texts .* at least 300", capsys.readouterr().err)
    path.write_text("\n".join(["a text"] * MIN_OBSERVATIONS))
    read_reference_texts(path)
    assert "warning" not in capsys.readouterr().err


def test_a_classifier_build_profiles_the_reference_as_transformers_labels_it(
    classifier_repository: Path, classifier_dir: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    build = classifier_repository / StepNames("sentiment", 1).entry / "1"  # where build writes it
    profile = Profile.read(build / PROFILE)
    assert profile is not None and profile.source == "built-in"
    for feature in profile.features:
        assert sum(profile.shares[feature.name]) == pytest.approx(1.0, abs=1e-5)
    assert {f.name for f in profile.of_kind("prediction")} == {"label", "confidence"}

    texts = builtin_reference_texts()
    tokenizer = AutoTokenizer.from_pretrained(str(classifier_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(classifier_dir)).eval()
    with torch.inference_mode():
        batch = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
        predicted = model(**batch).logits.argmax(dim=1).numpy()
    expected = np.bincount(predicted, minlength=model.config.num_labels) / len(texts)
    assert profile.shares["label"] == pytest.approx(expected.tolist(), abs=1e-6)
    # Each step finds the profile through its `ensemble` parameter.
    for step in ("sentiment_tokenizer.v1", "sentiment_postprocess.v1"):
        config = (classifier_repository / step / "config.pbtxt").read_text()
        assert re.search(r'key: "ensemble"\s+value \{\s+string_value: "sentiment.v1"', config)


def test_a_generator_build_profiles_prompts_and_what_generate_makes_of_them(
    tiny_decoder: Callable[[str], Path], tmp_path: Path
) -> None:
    """Prompt tokens over every reference text; output tokens and stop reasons of Hugging
    Face's greedy `generate` on the first GENERATION_PROFILE_PROMPTS at the default max_tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = tiny_decoder("llama-decoder")
    spec = BuildSpec(name="gen", task="generation", model=checkpoint, output=tmp_path,
                     max_seq_len=64, max_batch_size=2)  # fmt: skip
    build_repository(spec)
    profile = Profile.read(tmp_path / StepNames("gen", 1).entry / "1" / PROFILE)
    assert profile is not None
    assert [f.name for f in profile.features] == [
        "prompt_tokens", "script", "symbols", "output_tokens", "stop_reason"
    ]  # fmt: skip
    config = (tmp_path / "gen" / "config.pbtxt").read_text()
    assert re.search(r'key: "ensemble"\s+value \{\s+string_value: "gen.v1"', config)

    texts = builtin_reference_texts()
    hf = AutoTokenizer.from_pretrained(str(checkpoint))
    lengths = [len(hf(text)["input_ids"]) for text in texts]
    assert profile.shares["prompt_tokens"] == pytest.approx(
        shares(PROMPT_TOKENS.count(np.array(lengths))), abs=1e-6
    )
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
    eos = model.generation_config.eos_token_id
    ends = set(eos) if isinstance(eos, list) else {eos}
    outputs, reasons = [], []
    for text in [t for t, n in zip(texts, lengths, strict=True) if n < 64][:32]:
        ids = hf(text, return_tensors="pt")["input_ids"]
        allowed = min(16, 64 - ids.shape[1])
        with torch.inference_mode():
            new = model.generate(ids, do_sample=False, max_new_tokens=allowed,
                                 pad_token_id=min(ends))[0, ids.shape[1] :].tolist()  # fmt: skip
        made = new[: next((i for i, t in enumerate(new) if t in ends), len(new))]
        outputs.append(len(made))
        reasons.append(
            "end" if len(made) < allowed else "max_tokens" if allowed == 16 else "window"
        )
    assert profile.shares["output_tokens"] == pytest.approx(
        shares(OUTPUT_TOKENS.count(np.array(outputs))), abs=1e-6
    )
    expected = [reasons.count(r) / len(reasons) for r in STOP_REASONS]
    assert profile.shares["stop_reason"] == pytest.approx(expected, abs=1e-6)


def _normalised(text: str) -> str:
    return " ".join(text.split())


def test_the_shipped_recording_rules_are_the_ones_drift_queries() -> None:
    rules = yaml.safe_load((MONITORING / "drift.yml").read_text())["groups"][0]["rules"]
    shipped = {r["record"]: _normalised(r["expr"]) for r in rules if "record" in r}
    assert shipped == {name: _normalised(expr) for name, expr in recording_rules().items()}


def test_drift_alerts_pass_their_unit_tests_and_each_is_tested() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `apt-get install prometheus` (scripts/setup.sh)"
    result = subprocess.run(
        [promtool, "test", "rules", "drift_test.yml"], cwd=MONITORING, capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load((MONITORING / "drift.yml").read_text())["groups"][0]["rules"]
    alerts = {r["alert"] for r in rules if "alert" in r}
    tests = yaml.safe_load((MONITORING / "drift_test.yml").read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t["alert_rule_test"]}
    assert alerts == tested == {"TritonizeInputDrift", "TritonizePredictionDrift"}


def test_each_alert_waits_for_the_observations_drift_needs() -> None:
    rules = yaml.safe_load((MONITORING / "drift.yml").read_text())["groups"][0]["rules"]
    for alert in (r for r in rules if "alert" in r):
        assert _normalised(alert["expr"]).endswith(f">= {MIN_OBSERVATIONS}"), alert["alert"]


def _textbook_drift(feature: Feature, live: np.ndarray, reference: np.ndarray) -> float:
    if feature.measure == TVD:
        return float(0.5 * np.abs(live - reference).sum())
    p, q = np.maximum(live, 0.001), np.maximum(reference, 0.001)
    return float(np.sum((p - q) * np.log(p / q)))


@pytest.mark.parametrize("feature", [*INPUT_FEATURES, CENTROID_COSINE], ids=lambda f: f.name)
def test_a_reference_like_window_at_the_minimum_count_rarely_looks_like_drift(
    feature: Feature,
) -> None:
    """Sampling noise alone must stay under the threshold once a window holds the observations
    the alerts wait for. The reference spreads evenly over the bins, the noisiest case (PSI's
    noise is about (bins - 1) / observations): at 50 observations, a third of the windows of
    the 11-bin features crossed their threshold."""
    rng = np.random.default_rng(0)
    reference = np.full(len(feature.bins), 1 / len(feature.bins))
    windows = rng.multinomial(MIN_OBSERVATIONS, reference, size=4000) / MIN_OBSERVATIONS
    drift = np.array([_textbook_drift(feature, window, reference) for window in windows])
    assert (drift >= feature.threshold).mean() < 0.005, feature.name


def test_a_profile_round_trips_through_json() -> None:
    feature = numeric("tokens", "input", (4, 8))
    profile = Profile((feature,), {"tokens": [0.5, 0.25, 0.25]}, 4, "x", (1.0, 0.0))
    assert Profile.from_json(json.loads(json.dumps(profile.to_json()))) == profile
