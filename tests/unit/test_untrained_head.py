"""`build --task classification` refuses a checkpoint whose classification head transformers
would initialise at random, unless asked to build it anyway."""

from __future__ import annotations

from pathlib import Path

import pytest

from tritonize.cli import main
from tritonize.errors import ExportError
from tritonize.repository.writer import build_repository
from tritonize.spec import BuildSpec


def classification_spec(model: Path, output: Path, **kwargs: object) -> BuildSpec:
    return BuildSpec(name="sentiment", task="classification", model=model, output=output,
                     max_batch_size=2, max_seq_len=16, **kwargs)  # type: ignore[arg-type]  # fmt: skip


def test_a_plain_encoder_is_refused_as_a_classifier(minilm_dir: Path, tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 is a BertModel: as a classifier, `classifier.*` would be random."""
    with pytest.raises(ExportError) as refused:
        build_repository(classification_spec(minilm_dir, tmp_path / "repo"))
    message = str(refused.value)
    assert "has no trained classification head" in message
    assert "classifier.bias, classifier.weight" in message
    assert "--allow-untrained-head" in message
    assert not (tmp_path / "repo" / "sentiment").exists()  # nothing was written


def test_the_cli_says_so_without_a_traceback(
    minilm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["build", "--task", "classification", "--model", str(minilm_dir), "--name", "plain",
            "--output", str(tmp_path / "repo"), "--max-seq-len", "16"]  # fmt: skip
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "has no trained classification head" in err and "Traceback" not in err


def test_asked_for_it_builds_with_the_untrained_head(minilm_dir: Path, tmp_path: Path) -> None:
    result = build_repository(
        classification_spec(minilm_dir, tmp_path / "repo", allow_untrained_head=True)
    )
    assert "sentiment" in result.models


def test_a_trained_classifier_builds(classifier_dir: Path, tmp_path: Path) -> None:
    result = build_repository(classification_spec(classifier_dir, tmp_path / "repo"))
    assert "sentiment_postprocess.v1" in result.models


def test_the_flag_reaches_the_spec() -> None:
    spec = BuildSpec.from_mapping({"name": "x", "task": "classification",
                                   "allow_untrained_head": True})  # fmt: skip
    assert spec.allow_untrained_head is True
    with pytest.raises(Exception, match="allow_untrained_head"):
        BuildSpec.from_mapping({"name": "x", "task": "classification",
                                "allow_untrained_head": "yes"})  # fmt: skip


@pytest.mark.parametrize(
    ("task", "problem"),
    [
        ("question-answering", "has no trained question-answering head"),
        ("token-classification", "has no trained token-classification head"),
        # A bare encoder's config says two labels: no cross-encoder's score.
        ("rerank", "needs a cross-encoder with one output"),
    ],
)
def test_a_plain_encoder_is_refused_for_every_task_with_a_head(
    minilm_dir: Path, tmp_path: Path, task: str, problem: str
) -> None:
    spec = BuildSpec(name="plain", task=task, model=minilm_dir, output=tmp_path / "repo",
                     max_batch_size=2, max_seq_len=16)  # type: ignore[arg-type]  # fmt: skip
    with pytest.raises(ExportError, match=problem):
        build_repository(spec)
    assert not (tmp_path / "repo" / "plain").exists()
