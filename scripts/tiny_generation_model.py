#!/usr/bin/env python
"""Write a tiny random decoder-only checkpoint to try `--task generation` without a download.

    .venv/bin/python scripts/tiny_generation_model.py checkpoints/tiny-llama
    .venv/bin/tritonize build --model checkpoints/tiny-llama --task generation --name tiny-llama

The weights are random, so the text it generates is gibberish; everything else is real: a
Llama (or GPT-2) layout, a tokenizer trained here on a small corpus, end ids in
generation_config.json. It takes a few seconds and a few MB.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

CORPUS = """\
Triton serves transformers over HTTP and gRPC, one request or many at a time.
Once upon a time a small model learned to count tokens and to stop at the end.
The quick brown fox jumps over the lazy dog; the dog does not mind at all.
A dynamic batcher waits a moment so that requests arriving together run together.
Streams carry text as it is generated, one delta after another, until the last one.
Numbers like 1, 2, 3, 42 and 3.14 appear in text too, with punctuation: ? ! , . ;
"""
SHAPES = {  # small enough to build in seconds, large enough to exercise every code path
    "llama": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 256},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256},
}  # fmt: skip


def train_tokenizer(family: str) -> Any:
    """Byte-level BPE (GPT-2) or a SentencePiece-style BPE with byte fallback (Llama)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    corpus = CORPUS.splitlines() * 20
    if family == "gpt2":
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
    special = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]  # byte fallback needs them all
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special + byte_tokens)
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def write_checkpoint(family: str, dest: Path, seed: int) -> Path:
    """A random causal LM of `family`, its fast tokenizer and generation_config.json."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        GenerationConfig,
        PreTrainedTokenizerFast,
    )

    tokenizer = train_tokenizer(family)
    if family == "gpt2":
        end = tokenizer.token_to_id("<|endoftext|>")
        fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    else:
        end = tokenizer.token_to_id("</s>")
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
        )
        # ChatML turns closed by the end token, so the checkpoint serves chat too.
        fast.chat_template = (
            "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
            "{{ message['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )
    ids = {"eos_token_id": end, "bos_token_id": end, "pad_token_id": end}
    config = AutoConfig.for_model(family, vocab_size=tokenizer.get_vocab_size(), **SHAPES[family],
                                  **ids)  # fmt: skip
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).eval().save_pretrained(dest)
    fast.save_pretrained(dest)
    GenerationConfig(**ids).save_pretrained(dest)
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dest", type=Path, help="checkpoint directory to write")
    parser.add_argument("--family", choices=sorted(SHAPES), default="llama")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.dest.exists() and any(args.dest.iterdir()):
        print(f"error: {args.dest} exists and is not empty", file=sys.stderr)
        return 1
    write_checkpoint(args.family, args.dest, args.seed)
    print(f"wrote a tiny random {args.family} checkpoint to {args.dest}")
    print(f"  tritonize build --model {args.dest} --task generation --name tiny-{args.family}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
