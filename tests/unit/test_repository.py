"""Typed configs (golden files, round trip), the writer's layout, and the checker."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tritonize.errors import RepositoryConflictError, RepositoryError, SpecError, TritonizeError
from tritonize.repository import configs
from tritonize.repository.builds import serving
from tritonize.repository.checker import check_repository
from tritonize.repository.manifest import read_manifest
from tritonize.repository.writer import build_repository
from tritonize.spec import BuildSpec

GOLDEN = Path(__file__).parent / "golden"

SPEC = BuildSpec(
    name="sentiment",
    task="classification",
    max_batch_size=16,
    max_seq_len=128,
    preferred_batch_sizes=(4, 8),
    max_queue_delay_us=1500,
)
CONFIGS = {
    "tokenizer": configs.tokenizer_config(SPEC, pad_token_id=0),
    "engine": configs.engine_config(SPEC, "logits", (3,), pad_token_id=0),
    "postprocess": configs.postprocess_config(SPEC, ["negative", "neutral", "positive"]),
    "ensemble": configs.ensemble_config(SPEC, "logits", 3),
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_config_matches_golden_file(kind: str) -> None:
    path = GOLDEN / f"{kind}.pbtxt"
    text = configs.to_text(CONFIGS[kind])
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), "regenerate with UPDATE_GOLDEN=1 if the change is intended"


@pytest.mark.parametrize(
    ("target", "parameter"),
    [("local", "intra_op_threads"), ("onnxruntime", "intra_op_thread_count")],
)
def test_engine_threads_reach_the_engines_own_setting(target: str, parameter: str) -> None:
    spec = BuildSpec(name="sentiment", task="classification", target=target, engine_threads=3)
    config = configs.engine_config(spec, "logits", (3,), pad_token_id=0)
    assert config.parameters[parameter].string_value == "3"
    assert config.instance_group[0].count == (2 if target == "local" else 1)
    assert parameter not in configs.engine_config(SPEC, "logits", (3,), 0).parameters


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_config_round_trips(kind: str) -> None:
    assert configs.from_text(configs.to_text(CONFIGS[kind])) == CONFIGS[kind]


def test_built_repository_layout(classifier_repository: Path) -> None:
    names = sorted(p.name for p in classifier_repository.iterdir() if not p.name.startswith("."))
    assert names == [
        "sentiment",
        "sentiment.v1",
        "sentiment_engine.v1",
        "sentiment_postprocess.v1",
        "sentiment_tokenizer.v1",
    ]
    engine = classifier_repository / "sentiment_engine.v1" / "1"
    assert (engine / "model.onnx").exists()
    assert (engine / "triton_models" / "onnx_runner.py").exists()
    assert (classifier_repository / "sentiment_tokenizer.v1" / "1" / "tokenizer.json").exists()
    manifest = read_manifest(engine)
    assert manifest["spec"]["task"] == "classification"
    assert manifest["versions"]["torch"].startswith("2.")
    assert len(manifest["files"]["tokenizer.json"]) == 64
    assert not list(classifier_repository.glob(".staging-*"))


def test_built_repository_passes_the_checker(classifier_repository: Path) -> None:
    checked = check_repository(classifier_repository)
    assert checked["sentiment"].platform == "ensemble"


@pytest.fixture
def repo(classifier_repository: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(classifier_repository, copy)
    return copy


def _edit(repo: Path, model: str, old: str, new: str) -> None:
    path = repo / model / "config.pbtxt"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _problems(repo: Path) -> list[str]:
    with pytest.raises(RepositoryError) as info:
        check_repository(repo)
    return info.value.problems


def test_checker_names_a_miswired_step(repo: Path) -> None:
    for model in ("sentiment.v1", "sentiment"):  # the build's ensemble and its public copy
        _edit(repo, model, 'value: "logits"', 'value: "scores"')  # engine output renamed
    (problem,) = _problems(repo)  # the copy's wiring is the build's: named once
    assert problem == (
        "ensemble `sentiment.v1` step 3 (`sentiment_postprocess.v1`) input `logits`: "
        "tensor `logits` is produced by no earlier step"
    )


def test_checker_names_a_dtype_mismatch(repo: Path) -> None:
    _edit(repo, "sentiment_tokenizer.v1", "TYPE_INT64", "TYPE_INT32")
    (problem,) = _problems(repo)
    assert "step 2 (`sentiment_engine.v1`) input `input_ids`" in problem
    assert "TYPE_INT32 [-1], expected TYPE_INT64 [-1]" in problem


def test_checker_names_a_dims_mismatch(repo: Path) -> None:
    _edit(repo, "sentiment_postprocess.v1", "dims: 3", "dims: 4")
    problems = _problems(repo)
    assert any(
        "`sentiment_postprocess.v1`" in p and "expected TYPE_FP32 [4]" in p for p in problems
    )


def test_checker_names_a_batch_size_mismatch(repo: Path) -> None:
    _edit(repo, "sentiment_engine.v1", "max_batch_size: 8", "max_batch_size: 4")
    (problem,) = _problems(repo)
    assert "step 2 (`sentiment_engine.v1`): max_batch_size 4 is below the ensemble's 8" in problem


def test_checker_names_a_missing_step_model(repo: Path) -> None:
    shutil.rmtree(repo / "sentiment_postprocess.v1")
    assert any(
        "model `sentiment_postprocess.v1` is not in the repository" in p for p in _problems(repo)
    )


def test_checker_names_a_missing_model_file(repo: Path) -> None:
    (repo / "sentiment_engine.v1" / "1" / "model.py").unlink()
    assert _problems(repo) == ["model `sentiment_engine.v1` version 1: `model.py` is missing"]


def test_checker_names_an_unparsable_config(repo: Path) -> None:
    _edit(repo, "sentiment_tokenizer.v1", "max_batch_size: 8", "max_batch_size: ${max_batch}")
    problems = _problems(repo)
    assert any("model `sentiment_tokenizer.v1`: config.pbtxt does not parse" in p for p in problems)


def test_checker_rejects_an_empty_directory(tmp_path: Path) -> None:
    assert _problems(tmp_path) == [f"`{tmp_path}` holds no models"]


def test_labels_travel_as_a_parameter(classifier_repository: Path) -> None:
    config = configs.from_text(
        (classifier_repository / "sentiment_postprocess.v1" / "config.pbtxt").read_text()
    )
    assert json.loads(config.parameters["labels"].string_value) == [
        "negative",
        "neutral",
        "positive",
    ]


def _snapshot(repository: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(repository)): p.read_bytes() if p.is_file() else None
        for p in sorted(repository.rglob("*"))
    }


def _classifier_spec(checkpoint: Path, output: Path, **fields: object) -> BuildSpec:
    values: dict[str, object] = {
        "task": "classification",
        "model": checkpoint,
        "output": output,
        "max_batch_size": 8,
        "max_seq_len": 64,
        "name": "sentiment",
    }
    return BuildSpec.from_mapping({**values, **fields})


def test_build_refuses_models_another_ensemble_owns(repo: Path, classifier_dir: Path) -> None:
    before = _snapshot(repo)
    with pytest.raises(RepositoryConflictError) as info:
        build_repository(_classifier_spec(classifier_dir, repo, name="sentiment_engine"))
    assert "`sentiment_engine.v1` belongs to `sentiment`" in str(info.value)
    assert "--name" in str(info.value)
    assert _snapshot(repo) == before
    check_repository(repo)


def test_build_refuses_to_replace_an_existing_version(repo: Path, classifier_dir: Path) -> None:
    before = _snapshot(repo)
    with pytest.raises(RepositoryConflictError) as info:
        build_repository(_classifier_spec(classifier_dir, repo))
    message = str(info.value)
    assert "version 1 of `sentiment.v1`" in message
    assert "--overwrite" in message and "--model-version 2" in message
    assert _snapshot(repo) == before


def test_build_adds_a_new_version_beside_the_old_one(repo: Path, classifier_dir: Path) -> None:
    old_engine = (repo / "sentiment_engine.v1" / "1" / "model.onnx").read_bytes()
    build_repository(_classifier_spec(classifier_dir, repo, version=2))
    assert (repo / "sentiment_engine.v1" / "1" / "model.onnx").read_bytes() == old_engine
    assert (repo / "sentiment_engine.v2" / "2" / "model.onnx").exists()
    assert serving(repo, "sentiment").version == 1  # type: ignore[union-attr]
    check_repository(repo, hashes=True)


def test_build_with_overwrite_replaces_the_version(repo: Path, classifier_dir: Path) -> None:
    manifest = repo / "sentiment_engine.v1" / "1" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"owner"', '"owner_before"'))
    build_repository(_classifier_spec(classifier_dir, repo, overwrite=True))
    assert read_manifest(repo / "sentiment_engine.v1" / "1")["owner"] == "sentiment"
    check_repository(repo, hashes=True)


def test_every_model_version_lists_its_files(classifier_repository: Path) -> None:
    for model in ("sentiment_tokenizer.v1", "sentiment_engine.v1", "sentiment_postprocess.v1"):
        manifest = read_manifest(classifier_repository / model / "1")
        assert manifest["owner"] == "sentiment"
        listed = manifest["contents"]
        on_disk = {
            str(p.relative_to(classifier_repository / model / "1"))
            for p in (classifier_repository / model / "1").rglob("*")
            if p.is_file() and p.name != "manifest.json"
        }
        assert set(listed) == on_disk
        assert "model.py" in listed
        assert all(len(entry["sha256"]) == 64 and entry["size"] > 0 for entry in listed.values())


def test_checker_names_a_deleted_engine_file(repo: Path) -> None:
    (repo / "sentiment_engine.v1" / "1" / "model.onnx").unlink()
    assert _problems(repo) == ["model `sentiment_engine.v1` version 1: `model.onnx` is missing"]


def test_checker_names_an_altered_file(repo: Path) -> None:
    path = repo / "sentiment_tokenizer.v1" / "1" / "tokenizer.json"
    path.write_text(path.read_text().replace('"[PAD]"', '"[PAX]"', 1))  # same size, new mtime
    assert _problems(repo) == [
        "model `sentiment_tokenizer.v1` version 1: `tokenizer.json` differs from the build "
        "(size or sha256 changed)"
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [("{bad", "is not JSON"), ("[]", "is not a JSON object"), ('{"contents": []}', "no file list")],
)
def test_checker_names_an_unreadable_manifest(repo: Path, text: str, problem: str) -> None:
    (repo / "sentiment_engine.v1" / "1" / "manifest.json").write_text(text)
    (found,) = _problems(repo)
    assert (
        found.startswith("model `sentiment_engine.v1` version 1: `manifest.json` ")
        and problem in found
    )


def test_checker_names_a_file_added_after_the_build(repo: Path) -> None:
    (repo / "sentiment_tokenizer.v1" / "1" / "triton_models" / "evil.py").write_text("import os\n")
    assert _problems(repo) == [
        "model `sentiment_tokenizer.v1` version 1: `triton_models/evil.py` is not in the manifest "
        "(added after the build)"
    ]


def test_checker_hashes_files_whose_size_and_mtime_were_kept(repo: Path) -> None:
    path = repo / "sentiment_engine.v1" / "1" / "model.onnx"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    check_repository(repo)  # trusted on size and mtime: the fast default cannot see it
    with pytest.raises(RepositoryError) as info:
        check_repository(repo, hashes=True)
    assert info.value.problems == [
        "model `sentiment_engine.v1` version 1: `model.onnx` differs from the build "
        "(size or sha256 changed)"
    ]


def test_a_copy_without_kept_mtimes_still_passes(repo: Path, tmp_path: Path) -> None:
    plain_copy = tmp_path / "plain-copy"
    shutil.copytree(repo, plain_copy, copy_function=shutil.copyfile)  # new mtimes
    check_repository(plain_copy)


def test_check_removes_staging_left_inside_by_earlier_builds(repo: Path) -> None:
    (repo / ".staging-abc123" / "repository" / "sentiment").mkdir(parents=True)
    check_repository(repo)
    assert not list(repo.glob(".*"))


def test_check_command_hashes_on_request(repo: Path, capsys: pytest.CaptureFixture) -> None:
    from tritonize.cli import main

    path = repo / "sentiment_postprocess.v1" / "1" / "model.py"
    stat = path.stat()
    path.write_text(path.read_text().replace("TritonPythonModel", "TritonPythonModeL"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert main(["check", str(repo)]) == 0
    assert main(["check", str(repo), "--hashes"]) == 1
    assert "`model.py` differs from the build" in capsys.readouterr().err


def test_a_failed_build_leaves_no_output_directory_it_created(
    tmp_path: Path, classifier_dir: Path
) -> None:
    output = tmp_path / "new" / "repository"
    with pytest.raises(TritonizeError, match="max_seq_len"):  # more than the model's positions
        build_repository(_classifier_spec(classifier_dir, output, max_seq_len=4096))
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(TritonizeError):
        build_repository(_classifier_spec(classifier_dir, existing, max_seq_len=4096))
    assert existing.is_dir()  # not this build's to remove


def test_an_output_that_is_a_file_is_named(tmp_path: Path, classifier_dir: Path) -> None:
    output = tmp_path / "afile"
    output.write_text("not a repository")
    with pytest.raises(RepositoryError, match="`.*afile` is a file: expected a directory"):
        build_repository(_classifier_spec(classifier_dir, output))
    assert output.read_text() == "not a repository"


def test_too_few_reference_texts_are_refused_before_any_export(
    tmp_path: Path, classifier_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    few = tmp_path / "few.txt"
    few.write_text("one\ntwo\n")
    output = tmp_path / "repository"
    with pytest.raises(SpecError, match="has 2 non-blank lines"):
        build_repository(_classifier_spec(classifier_dir, output, reference_texts=few))
    assert "Exporting" not in capsys.readouterr().err
    assert not output.exists()
