"""Builds under names of their own and the public model that points at one: the layout, what
check refuses, what a rollout compares and refuses before it touches a server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tritonize.errors import RepositoryError, SpecError
from tritonize.repository.builds import (
    HISTORY,
    build_versions,
    point,
    previous,
    serving,
    startup_models,
)
from tritonize.repository.checker import check_repository
from tritonize.repository.configs import from_text, to_text
from tritonize.repository.writer import build_repository
from tritonize.rollout.agreement import sample_texts
from tritonize.rollout.interface import differences, public_interface
from tritonize.rollout.lifecycle import Gates, RolloutError, Server, keep_builds, rollout
from tritonize.spec import BuildSpec
from tritonize.tasks.build import StepNames
from tritonize.triton_models.compare import disagreement

NAME = "sentiment"


def test_step_names_carry_the_build() -> None:
    names = StepNames("sentiment", 3)
    assert (names.entry, names.tokenizer, names.engine, names.postprocess) == (
        "sentiment.v3", "sentiment_tokenizer.v3", "sentiment_engine.v3", "sentiment_postprocess.v3"
    )  # fmt: skip
    assert StepNames.of_entry("my.very.v12") == StepNames("my.very", 12)
    assert StepNames.of_entry("my.very") == StepNames("my.very")  # a plain name
    assert StepNames("legacy").tokenizer == "legacy_tokenizer"


@pytest.mark.parametrize("name", ["sentiment.v2", "a.v10"])
def test_a_name_that_reads_as_a_build_is_refused(name: str) -> None:
    with pytest.raises(SpecError, match="not ending in '.v' and a number"):
        BuildSpec(name=name, task="embedding")


def test_a_later_build_waits_beside_the_serving_one(two_builds: Path) -> None:
    assert build_versions(two_builds, NAME) == [1, 2]
    assert serving(two_builds, NAME).version == 1  # type: ignore[union-attr]
    public = from_text((two_builds / NAME / "config.pbtxt").read_text())
    assert list(public.version_policy.specific.versions) == [1]
    # Every step of the public ensemble is build 1's, pinned to its version.
    steps = [(s.model_name, s.model_version) for s in public.ensemble_scheduling.step]
    assert steps == [(m, 1) for m in StepNames(NAME, 1).steps]
    assert (two_builds / NAME / "1").resolve() == (two_builds / f"{NAME}.v1" / "1").resolve()
    assert json.loads((two_builds / NAME / "golden.json").read_text())["version"] == 1
    # The server loads the public model (which brings build 1's steps), not build 2.
    assert startup_models(two_builds) == [NAME]


def test_pointing_moves_the_public_model_and_keeps_the_order(repository: Path) -> None:
    point(repository, NAME, 2)
    assert serving(repository, NAME).version == 2  # type: ignore[union-attr]
    assert json.loads((repository / NAME / "golden.json").read_text())["version"] == 2
    assert previous(repository, NAME) == 1
    history = json.loads((repository / NAME / HISTORY).read_text())["history"]
    assert [h["version"] for h in history] == [1, 2]
    check_repository(repository, recover=False)  # a moved pointer is a valid repository


def test_check_refuses_an_unpinned_step_of_several_versions(repository: Path) -> None:
    entry = repository / f"{NAME}.v1" / "config.pbtxt"
    entry.write_text(entry.read_text().replace("model_version: 1", "model_version: -1"))
    shutil.copytree(repository / f"{NAME}_engine.v1" / "1", repository / f"{NAME}_engine.v1" / "3")
    with pytest.raises(RepositoryError, match="runs the latest of versions \\[1, 3\\]"):
        check_repository(repository, recover=False)


def test_check_names_a_missing_step_version_once(repository: Path) -> None:
    """The public model is a copy of its build's entry: their shared steps are checked once."""
    shutil.rmtree(repository / f"{NAME}_tokenizer.v1" / "1")
    with pytest.raises(RepositoryError) as refused:
        check_repository(repository, recover=False)
    pins = [p for p in refused.value.problems if "pins version 1, which is not on disk" in p]
    assert pins == [f"ensemble `{NAME}.v1` step `{NAME}_tokenizer.v1` pins version 1, which is "
                    "not on disk"]  # fmt: skip


def test_check_refuses_a_pointer_edited_by_hand(repository: Path) -> None:
    config = repository / NAME / "config.pbtxt"
    config.write_text(config.read_text().replace("sentiment_engine.v1", "sentiment_engine.v2"))
    with pytest.raises(RepositoryError, match="is not build 1's config"):
        check_repository(repository, recover=False)


def test_interfaces_of_two_builds_of_one_checkpoint_match(two_builds: Path) -> None:
    assert (
        differences(public_interface(two_builds, NAME, 1), public_interface(two_builds, NAME, 2))
        == []
    )


def test_an_interface_change_is_named(repository: Path) -> None:
    postprocess = repository / f"{NAME}_postprocess.v2" / "config.pbtxt"
    config = from_text(postprocess.read_text())
    labels = json.loads(config.parameters["labels"].string_value)
    config.parameters["labels"].string_value = json.dumps([*labels[:-1], "sarcastic"])
    postprocess.write_text(to_text(config))
    entry = repository / f"{NAME}.v2" / "config.pbtxt"
    entry.write_text(entry.read_text().replace('name: "SCORE"', 'name: "CONFIDENCE"'))
    found = differences(
        public_interface(repository, NAME, 1), public_interface(repository, NAME, 2)
    )
    assert "output `SCORE` is gone" in found and "output `CONFIDENCE` is new" in found
    assert any(d.startswith("labels ") and "sarcastic" in d for d in found)


def test_rollout_refuses_a_different_interface_before_touching_a_server(repository: Path) -> None:
    entry = repository / f"{NAME}.v2" / "config.pbtxt"
    entry.write_text(entry.read_text().replace('name: "SCORE"', 'name: "CONFIDENCE"'))
    server = Server(repository, "127.0.0.1:9", "key")  # nothing listens: never reached
    with pytest.raises(RolloutError, match="would break its clients: output `SCORE` is gone"):
        rollout(server, NAME, 2, Gates())
    assert serving(repository, NAME).version == 1  # type: ignore[union-attr]


def test_rollout_refuses_a_build_altered_after_it_was_built(repository: Path) -> None:
    (repository / f"{NAME}_engine.v2" / "2" / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(RolloutError, match="is not as built: sentiment_engine.v2"):
        rollout(Server(repository, "127.0.0.1:9", "key"), NAME, 2, Gates())


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (1, "already serves build 1"),
        (7, "build 7 of `sentiment` is not on disk \\(builds: 1, 2\\)"),
    ],
)
def test_rollout_refuses_a_build_it_cannot_move_to(
    repository: Path, version: int, message: str
) -> None:
    with pytest.raises(RolloutError, match=message):
        rollout(Server(repository, "127.0.0.1:9", "key"), NAME, version, Gates())


def test_rollout_to_a_server_that_is_down_changes_nothing(repository: Path) -> None:
    before = (repository / NAME / "config.pbtxt").read_text()
    with pytest.raises(RolloutError, match="cannot act on the server"):
        rollout(Server(repository, "127.0.0.1:9", "key"), NAME, 2, Gates())
    assert (repository / NAME / "config.pbtxt").read_text() == before


def test_builds_load_through_http_when_grpc_does_not_answer(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = Server(repository, "127.0.0.1:9", "key", grpc_url="127.0.0.1:9").admin()
    assert admin.grpc_url is None
    assert "gRPC at 127.0.0.1:9 does not answer: loading through HTTP" in capsys.readouterr().err


def test_keep_removes_old_builds_but_the_serving_and_previous(
    repository: Path, classifier_dir: Path
) -> None:
    for version in (3, 4):
        build_repository(
            BuildSpec(name=NAME, task="classification", model=classifier_dir, output=repository,
                      max_batch_size=8, max_seq_len=64, version=version)
        )  # fmt: skip
    point(repository, NAME, 2)
    removed = keep_builds(Server(repository, "127.0.0.1:9", "key"), NAME, keep=1)
    assert removed == [3]  # 1 is what a rollback returns to, 2 serves, 4 is the newest
    assert build_versions(repository, NAME) == [1, 2, 4]
    assert not any(p.name.endswith(".v3") for p in repository.iterdir())
    check_repository(repository, recover=False)


def test_responses_agree_output_by_output() -> None:
    a = {"LABEL": np.array([[b"pos"]], dtype=object), "PROBABILITIES": np.array([[0.9, 0.1]])}
    assert disagreement(a, a) is None
    flipped = {**a, "LABEL": np.array([[b"neg"]], dtype=object)}
    assert disagreement(a, flipped) == "`LABEL` ['pos'] vs ['neg']"
    turned = {**a, "PROBABILITIES": np.array([[0.1, 0.9]])}
    assert disagreement(a, turned) == "`PROBABILITIES` cosine 0.2195"


def test_sample_texts_are_read_from_a_file_or_refused(tmp_path: Path) -> None:
    assert len(sample_texts(None, 5)) == 5
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(Exception, match="no texts"):
        sample_texts(tmp_path / "empty.txt", 5)
