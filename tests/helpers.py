"""Test helpers importable by any test module (conftest modules are not meant to be)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from tritonize.processes import free_ports  # noqa: F401  (the tests import it from here)

FIXTURES = Path(__file__).parent / "fixtures"


def wait_for(condition: Callable[[], Any], timeout_s: float, step_s: float = 0.5) -> Any:
    """`condition()`'s first truthy value within `timeout_s`, polled every `step_s`; else None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(step_s)
    return None


@cache
def train_tokenizer(style: str) -> Any:
    """A small tokenizer trained on fixtures/corpus.txt.

    `byte_level`: GPT-2's byte-level BPE. `sentencepiece`: Llama's layout (a `▁` word marker,
    BPE with byte fallback through `<0xXX>` tokens in the vocabulary, a decoder that fuses bytes).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    corpus = (FIXTURES / "corpus.txt").read_text(encoding="utf-8").splitlines() * 10
    if style == "byte_level":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tokenizer.train_from_iterator(corpus, trainer)
        return tokenizer
    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
         decoders.Strip(" ", 1, 0)]
    )  # fmt: skip
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<eot>"])
    tokenizer.train_from_iterator(corpus, trainer)
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for byte in range(256):  # byte fallback needs the byte tokens inside the model's vocab
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    return Tokenizer.from_str(json.dumps(data))


TOKENIZERS = {
    style: (lambda style=style: train_tokenizer(style)) for style in ("byte_level", "sentencepiece")
}


def hf_greedy(checkpoint: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Hugging Face `generate(do_sample=False)`: the new tokens, up to the first end id."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    end_ids = GenerationConfig.from_pretrained(checkpoint).eos_token_id
    end_ids = end_ids if isinstance(end_ids, list) else [end_ids]
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=end_ids,
                             pad_token_id=end_ids[0])  # fmt: skip
    generated = out[0, len(prompt_ids) :].tolist()
    ends = [i for i, token in enumerate(generated) if token in end_ids]
    return generated[: ends[0]] if ends else generated


PROMPTS = [
    "Once upon a time",
    "Triton serves",
    "今天天气很好",
    "The quick brown fox jumps over the",
]


def greedy_through_scheduler(
    checkpoint: Path, session: Any, prompts: list[str], new_tokens: int, join_after: int = 2
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, generated ids) of greedy decoding through the generator's scheduler over
    `session`: half the prompts start, the other half join after `join_after` steps."""
    import tokenizers

    from tritonize.triton_models.generation import GenerationParams
    from tritonize.triton_models.generator import Scheduler, Sequence

    tokenizer = tokenizers.Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    end_ids = json.loads((checkpoint / "generation_config.json").read_text())["eos_token_id"]
    params = GenerationParams(max_tokens=new_tokens, end_ids=frozenset(end_ids))
    sequences = [Sequence(tokenizer.encode(p).ids, params, tokenizer) for p in prompts]
    run_scheduler(Scheduler(session, max_active=8, context_window=128), sequences, join_after)
    return [(s.prompt, s.generated) for s in sequences]


def run_scheduler(scheduler: Any, sequences: list[Any], join_after: int = 2) -> None:
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
