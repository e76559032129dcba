"""Fixtures shared by every tier: the bundled MiniLM and tiny random checkpoints."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may download
# Tests import Locust shapes as plain classes: keep gevent from patching the test process.
os.environ.setdefault("LOCUST_SKIP_MONKEY_PATCH", "1")

FIXTURES = Path(__file__).parent / "fixtures"
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


def build_tiny_checkpoint(config_name: str, dest: Path, tokenizer_from: Path) -> Path:
    """A random model from `fixtures/tiny_configs/<config_name>.json`, saved with a real tokenizer.

    Configs with `id2label` become sequence classifiers (their `initializer_range` is large so
    that labels are decided by clear margins rather than by noise).
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    values = json.loads((FIXTURES / "tiny_configs" / f"{config_name}.json").read_text())
    config = AutoConfig.for_model(**values)
    torch.manual_seed(0)
    if "id2label" in values:
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModel.from_config(config)
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
