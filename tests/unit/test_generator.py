"""The generator's decoding loop in-process: greedy output is token-identical to Hugging Face
`generate`, with prompts of different lengths decoded together and joining mid-flight."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import tokenizers

from helpers import hf_greedy
from tritonize.export.decoders import export_decoder, load_decoder
from tritonize.triton_models.generation import GenerationParams
from tritonize.triton_models.generator import DecoderSession, Scheduler, Sequence

PROMPTS = [
    "Once upon a time",
    "Triton serves",
    "今天天气很好",
    "The quick brown fox jumps over the",
]
NEW_TOKENS = 12


@pytest.fixture(scope="module", params=["gpt2-decoder", "llama-decoder"])
def decoder(request: pytest.FixtureRequest, tiny_decoder: Callable[[str], Path],
            tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:  # fmt: skip
    checkpoint = tiny_decoder(request.param)
    wrapper, config = load_decoder(checkpoint, trust_remote_code=False)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_decoder(wrapper, config, path, opset=17)
    return checkpoint, path


def run(scheduler: Scheduler, sequences: list[Sequence], join_after: int = 2) -> None:
    """Submit half now and half after a few steps, then step until all are done."""
    for sequence in sequences[::2]:
        scheduler.submit(sequence)
    steps = 0
    while not all(s.finished for s in sequences):
        scheduler.step(idle_wait_s=0)
        steps += 1
        if steps == join_after:
            for sequence in sequences[1::2]:
                scheduler.submit(sequence)
        assert steps < 200


def test_greedy_is_token_identical_to_hf_generate(decoder: tuple[Path, Path]) -> None:
    import json

    checkpoint, onnx_path = decoder
    tokenizer = tokenizers.Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    end_ids = json.loads((checkpoint / "generation_config.json").read_text())["eos_token_id"]
    session = DecoderSession(onnx_path, layers=2)
    scheduler = Scheduler(session, max_active=8, context_window=128)
    sequences = [
        Sequence(
            tokenizer.encode(p).ids,
            GenerationParams(max_tokens=NEW_TOKENS, end_ids=frozenset(end_ids)),
            tokenizer,
        )
        for p in PROMPTS
    ]
    run(scheduler, sequences)
    for sequence in sequences:
        assert sequence.generated == hf_greedy(checkpoint, sequence.prompt, NEW_TOKENS)
    assert any(len(s.generated) > 3 for s in sequences)


def test_seeded_sampling_is_reproducible_and_batch_independent(decoder: tuple[Path, Path]) -> None:
    checkpoint, onnx_path = decoder
    tokenizer = tokenizers.Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    session = DecoderSession(onnx_path, layers=2)

    def sample(with_company: bool) -> list[int]:
        params = GenerationParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=42)
        target = Sequence(tokenizer.encode(PROMPTS[0]).ids, params, tokenizer)
        others = [Sequence(tokenizer.encode(p).ids, GenerationParams(max_tokens=10), tokenizer)
                  for p in PROMPTS[1:]] if with_company else []  # fmt: skip
        run(Scheduler(session, max_active=8, context_window=128), [target, *others])
        return target.generated

    assert sample(False) == sample(False) == sample(True)


def test_context_window_and_stop_words_end_a_sequence(decoder: tuple[Path, Path]) -> None:
    checkpoint, onnx_path = decoder
    tokenizer = tokenizers.Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    prompt = tokenizer.encode(PROMPTS[3]).ids
    scheduler = Scheduler(DecoderSession(onnx_path, layers=2), 4, context_window=len(prompt) + 3)
    sequence = Sequence(prompt, GenerationParams(max_tokens=50), tokenizer)
    run(scheduler, [sequence])
    assert len(sequence.generated) == 3  # the window, not max_tokens, ended it
