"""The generator's decoding loop in-process: greedy output is token-identical to Hugging Face
`generate`, with prompts of different lengths decoded together and joining mid-flight."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import tokenizers

from helpers import PROMPTS, greedy_through_scheduler, hf_greedy, run_scheduler
from tritonize.export.decoders import export_decoder, load_decoder
from tritonize.triton_models.decoding import DecoderSession, OnnxDecoderRuntime
from tritonize.triton_models.generation import GenerationParams
from tritonize.triton_models.generator import Scheduler, Sequence

NEW_TOKENS = 12


@pytest.fixture(scope="module", params=["gpt2-decoder", "llama-decoder"])
def decoder(request: pytest.FixtureRequest, tiny_decoder: Callable[[str], Path],
            tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:  # fmt: skip
    checkpoint = tiny_decoder(request.param)
    wrapper, config = load_decoder(checkpoint, trust_remote_code=False)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_decoder(wrapper, config, path, opset=17)
    return checkpoint, path


def test_greedy_is_token_identical_to_hf_generate(decoder: tuple[Path, Path]) -> None:
    checkpoint, onnx_path = decoder
    session = DecoderSession(OnnxDecoderRuntime(onnx_path))
    results = greedy_through_scheduler(checkpoint, session, PROMPTS, NEW_TOKENS)
    for prompt, generated in results:
        assert generated == hf_greedy(checkpoint, prompt, NEW_TOKENS)
    assert any(len(generated) > 3 for _, generated in results)


def test_seeded_sampling_is_reproducible_and_batch_independent(decoder: tuple[Path, Path]) -> None:
    checkpoint, onnx_path = decoder
    tokenizer = tokenizers.Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    session = DecoderSession(OnnxDecoderRuntime(onnx_path))

    def sample(with_company: bool) -> list[int]:
        params = GenerationParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=42)
        target = Sequence(tokenizer.encode(PROMPTS[0]).ids, params, tokenizer)
        others = [Sequence(tokenizer.encode(p).ids, GenerationParams(max_tokens=10), tokenizer)
                  for p in PROMPTS[1:]] if with_company else []  # fmt: skip
        run_scheduler(Scheduler(session, max_active=8, context_window=128), [target, *others])
        return target.generated

    assert sample(False) == sample(False) == sample(True)


def test_context_window_and_stop_words_end_a_sequence(decoder: tuple[Path, Path]) -> None:
    checkpoint, onnx_path = decoder
    tokenizer = tokenizers.Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    prompt = tokenizer.encode(PROMPTS[3]).ids
    session = DecoderSession(OnnxDecoderRuntime(onnx_path))
    scheduler = Scheduler(session, 4, context_window=len(prompt) + 3)
    sequence = Sequence(prompt, GenerationParams(max_tokens=50), tokenizer)
    run_scheduler(scheduler, [sequence])
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
    runtime = RecordingRuntime(onnx_path)
    session = DecoderSession(runtime)
    short, long = "short", "long"
    session.prefill({short: [5, 6]})
    session.prefill({long: [5, 6, 7, 8, 9]})
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
    assert min(past[0].shape[2] for _, _, past in runtime.calls) == 1  # never an empty tensor
    with pytest.raises(KeyError, match="never prefilled"):
        session.decode(["unknown"], [1])


def test_a_sequence_prefills_and_decodes_the_same_alone_and_in_company(
    decoder: tuple[Path, Path],
) -> None:
    import numpy as np

    _, onnx_path = decoder
    alone, crowd = (DecoderSession(OnnxDecoderRuntime(onnx_path)) for _ in range(2))
    expected = alone.prefill({"a": [3, 4, 5]})[0]
    together = crowd.prefill({"b": list(range(10, 30)), "a": [3, 4, 5]})  # "a" left-padded
    np.testing.assert_allclose(together[1], expected, atol=1e-5)
    expected = alone.decode(["a"], [7])[0]
    np.testing.assert_allclose(crowd.decode(["b", "a"], [9, 7])[1], expected, atol=1e-5)


def test_a_sequence_may_leave_while_another_waits_to_join(decoder: tuple[Path, Path]) -> None:
    import numpy as np

    _, onnx_path = decoder
    session = DecoderSession(OnnxDecoderRuntime(onnx_path))
    alone = DecoderSession(OnnxDecoderRuntime(onnx_path))
    for key, prompt in {"a": [3, 4], "b": [5, 6, 7], "c": [8, 9, 10, 11]}.items():
        session.prefill({key: prompt})
        if key == "c":
            alone.prefill({key: prompt})
    session.decode(["a", "b"], [1, 2])  # c was prefilled during this step: it joins next
    session.decode(["a"], [1])  # b left
    session.release("never-prefilled")  # harmless
    logits = session.decode(["a", "c"], [1, 12])
    np.testing.assert_allclose(logits[1], alone.decode(["c"], [12])[0], atol=1e-5)


def test_sequences_whose_prefill_fails_are_active_so_they_get_an_answer(
    decoder: tuple[Path, Path],
) -> None:
    class Broken(OnnxDecoderRuntime):
        def run(self, *args):  # type: ignore[no-untyped-def]
            raise RuntimeError("device lost")

    checkpoint, onnx_path = decoder
    tokenizer = tokenizers.Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    scheduler = Scheduler(DecoderSession(Broken(onnx_path)), 4, context_window=128)
    params = GenerationParams(max_tokens=4)
    sequences = [Sequence(tokenizer.encode(p).ids, params, tokenizer) for p in PROMPTS]
    for sequence in sequences:
        scheduler.submit(sequence)
    with pytest.raises(RuntimeError, match="device lost"):
        scheduler.step(idle_wait_s=0)
    assert scheduler.abort() == sequences  # the adapter answers each of them with the error
    assert not scheduler.active and not scheduler.session.joining


def test_each_final_event_says_why_its_sequence_ended(decoder: tuple[Path, Path]) -> None:
    """The reasons the live `stop_reason` feature counts: an end id, a stop word, max_tokens,
    the context window."""
    checkpoint, onnx_path = decoder
    tokenizer = tokenizers.Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    prompt = tokenizer.encode(PROMPTS[3]).ids
    free = Sequence(prompt, GenerationParams(max_tokens=6), tokenizer)
    scheduler = Scheduler(DecoderSession(OnnxDecoderRuntime(onnx_path)), 4, context_window=128)
    first = next(e for e in _events(scheduler, free) if e.final)
    greedy = free.generated
    cases = {
        "max_tokens": Sequence(prompt, GenerationParams(max_tokens=3), tokenizer),
        "end": Sequence(prompt, GenerationParams(max_tokens=6, end_ids=frozenset(greedy[2:3])),
                        tokenizer),
        "stop_word": Sequence(prompt, GenerationParams(
            max_tokens=6, stop_words=(tokenizer.decode(greedy[:3])[-2:],)), tokenizer),
    }  # fmt: skip
    assert first.reason == "max_tokens"
    for reason, sequence in cases.items():
        finals = [e for e in _events(scheduler, sequence) if e.final]
        assert [e.reason for e in finals] == [reason], (reason, sequence.generated)
    windowed = Scheduler(DecoderSession(OnnxDecoderRuntime(onnx_path)), 4, len(prompt) + 2)
    long = Sequence(prompt, GenerationParams(max_tokens=50), tokenizer)
    assert [e.reason for e in _events(windowed, long) if e.final] == ["window"]


def _events(scheduler: Scheduler, sequence: Sequence) -> list:
    scheduler.submit(sequence)
    events = []
    while not sequence.finished:
        events += scheduler.step(idle_wait_s=0)
    return events
