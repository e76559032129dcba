"""Test helpers importable by any test module (conftest modules are not meant to be)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


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
