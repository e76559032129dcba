"""Fixtures shared by every tier: the bundled MiniLM and tiny random checkpoints."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import FIXTURES, train_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may download
# Tests import Locust shapes as plain classes: keep gevent from patching the test process.
os.environ.setdefault("LOCUST_SKIP_MONKEY_PATCH", "1")

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from tritonize.spec import bundled_model_dir

    return bundled_model_dir()


_HEADS = ("ForSequenceClassification", "ForQuestionAnswering", "ForTokenClassification")


def build_tiny_checkpoint(config_name: str, dest: Path, tokenizer_from: Path) -> Path:
    """A random model from `fixtures/tiny_configs/<config_name>.json`, saved with a real tokenizer.

    The config's `architectures` picks the head (`...ForSequenceClassification`,
    `...ForQuestionAnswering`, `...ForTokenClassification`); without one it is a bare encoder.
    Heads have a large `initializer_range`, so that their answers are decided by clear margins
    rather than by noise.
    """
    import torch
    import transformers

    values = json.loads((FIXTURES / "tiny_configs" / f"{config_name}.json").read_text())
    config = transformers.AutoConfig.for_model(**values)
    torch.manual_seed(0)
    architecture = (values.get("architectures") or [""])[0]
    head = next((h for h in _HEADS if architecture.endswith(h)), None)
    auto_class = getattr(transformers, f"AutoModel{head}" if head else "AutoModel")
    model = auto_class.from_config(config)
    model.eval().save_pretrained(dest)
    for name in TOKENIZER_FILES:
        shutil.copy2(tokenizer_from / name, dest / name)
    return dest


@pytest.fixture(scope="session")
def tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path
) -> Callable[[str], Path]:
    """Factory: the tiny checkpoint for a config name, built once per session."""
    built: dict[str, Path] = {}

    def make(config_name: str) -> Path:
        if config_name not in built:
            dest = tmp_path_factory.mktemp(f"tiny-{config_name}")
            built[config_name] = build_tiny_checkpoint(config_name, dest, minilm_dir)
        return built[config_name]

    return make


@pytest.fixture(scope="session")
def classifier_dir(tiny_checkpoint: Callable[[str], Path]) -> Path:
    return tiny_checkpoint("bert-classifier")


@pytest.fixture(scope="session")
def classifier_repository(tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path) -> Path:
    """A repository built from the tiny classifier (read-only: copy it to change it)."""
    from tritonize.repository.writer import build_repository
    from tritonize.spec import BuildSpec

    output = tmp_path_factory.mktemp("classifier-repository")
    spec = BuildSpec(
        name="sentiment",
        task="classification",
        model=classifier_dir,
        output=output,
        max_batch_size=8,
        max_seq_len=64,
    )
    return build_repository(spec).repository


def build_tiny_decoder(config_name: str, dest: Path) -> Path:
    """A random causal LM with a trained tokenizer and a generation_config.json."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        GenerationConfig,
        PreTrainedTokenizerFast,
    )

    style = "byte_level" if config_name.startswith("gpt2") else "sentencepiece"
    tokenizer = train_tokenizer(style)
    if style == "byte_level":
        eos = [tokenizer.token_to_id("<|endoftext|>")]
        fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    else:  # two end ids, as recent Llama checkpoints have
        eos = [tokenizer.token_to_id("</s>"), tokenizer.token_to_id("<eot>")]
        fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>",
                                       eos_token="</s>", unk_token="<unk>")  # fmt: skip
        # ChatML turns closed by the model's own end id: a checkpoint that serves chat (gpt2
        # keeps none, so both kinds are built).
        fast.chat_template = (
            "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
            "{{ message['content'] }}<eot>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )
    values = json.loads((FIXTURES / "tiny_configs" / f"{config_name}.json").read_text())
    config = AutoConfig.for_model(
        **values,
        vocab_size=tokenizer.get_vocab_size(),
        eos_token_id=eos,
        bos_token_id=eos[0],
        pad_token_id=eos[0],
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(dest)
    fast.save_pretrained(dest)
    GenerationConfig(eos_token_id=eos, bos_token_id=eos[0], pad_token_id=eos[0]).save_pretrained(
        dest
    )
    return dest


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: `gpt2-decoder` or `llama-decoder`, built once per session."""
    built: dict[str, Path] = {}

    def make(config_name: str) -> Path:
        if config_name not in built:
            dest = tmp_path_factory.mktemp(config_name)
            built[config_name] = build_tiny_decoder(config_name, dest)
        return built[config_name]

    return make
