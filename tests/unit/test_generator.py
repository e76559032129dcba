"""The generator's decoding loop in-process: greedy output is token-identical to Hugging Face
`generate`, with prompts of different lengths decoded together and joining mid-flight."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import tokenizers

from helpers import hf_greedy
from tritonize.export.decoders import export_decoder, load_decoder
from tritonize.triton_models.decoding import DecoderSession, OnnxDecoderRuntime
from tritonize.triton_models.generation import GenerationParams
from tritonize.triton_models.generator import Scheduler, Sequence

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
    session = DecoderSession(OnnxDecoderRuntime(onnx_path, layers=2))
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
    session = DecoderSession(OnnxDecoderRuntime(onnx_path, layers=2))

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
    session = DecoderSession(OnnxDecoderRuntime(onnx_path, layers=2))
    scheduler = Scheduler(session, 4, context_window=len(prompt) + 3)
    sequence = Sequence(prompt, GenerationParams(max_tokens=50), tokenizer)
    run(scheduler, [sequence])
    assert len(sequence.generated) == 3  # the window, not max_tokens, ended it


class RecordingRuntime(OnnxDecoderRuntime):
    """The real runtime, noting what each call was given."""

    calls: list[tuple[list[int], tuple[int, int], list[object]]]

    def run(self, input_ids, attention_mask, position_ids, past):  # type: ignore[no-untyped-def]
        self.calls = [*getattr(self, "calls", []), (position_ids[:, 0].tolist(),
                      attention_mask.shape, list(past))]  # fmt: skip
        return super().run(input_ids, attention_mask, position_ids, past)


def test_the_cache_stays_in_the_runtime_until_the_batch_changes(
    decoder: tuple[Path, Path],
) -> None:
    _, onnx_path = decoder
    runtime = RecordingRuntime(onnx_path, layers=2)
    session = DecoderSession(runtime)
    short, long = "short", "long"
    session.prefill(short, [5, 6])
    session.prefill(long, [5, 6, 7, 8, 9])
    session.decode([short, long], [1, 2])
    first_presents = session.past
    session.decode([short, long], [1, 2])
    positions, shape, past = runtime.calls[-1]
    assert all(a is b for a, b in zip(past, first_presents, strict=True))  # bound as is: no copy
    assert positions == [3, 6] and shape == (2, 7)  # real lengths; left padding masked
    session.decode([short], [3])  # the long one left: re-packed without its padding
    positions, shape, past = runtime.calls[-1]
    assert positions == [4] and shape == (1, 5)
    assert not any(a is b for a in past for b in first_presents)
    with pytest.raises(KeyError, match="never prefilled"):
        session.decode(["unknown"], [1])


def test_a_sequence_decodes_the_same_alone_and_in_company(decoder: tuple[Path, Path]) -> None:
    import numpy as np

    _, onnx_path = decoder
    alone, crowd = (DecoderSession(OnnxDecoderRuntime(onnx_path, layers=2)) for _ in range(2))
    alone.prefill("a", [3, 4, 5])
    crowd.prefill("a", [3, 4, 5])
    crowd.prefill("b", list(range(10, 30)))
    expected = alone.decode(["a"], [7])[0]
    np.testing.assert_allclose(crowd.decode(["b", "a"], [9, 7])[1], expected, atol=1e-5)
