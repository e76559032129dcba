from pathlib import Path

import pytest

from tritonize.errors import SpecError
from tritonize.spec import BuildSpec, Precision, Target, Task


def test_defaults_are_valid_and_typed() -> None:
    spec = BuildSpec(name="minilm", task="embedding")
    assert spec.task is Task.EMBEDDING
    assert spec.target is Target.LOCAL
    assert spec.precision is Precision.FP32
    assert spec.model_dir.is_dir()  # the bundled checkpoint
    assert spec.to_dict()["task"] == "embedding"


def test_engine_instances_default_to_the_targets_own() -> None:
    local = BuildSpec(name="m", task="embedding")
    gpu = BuildSpec(name="m", task="embedding", target="tensorrt")
    assert (local.engine_instances, gpu.engine_instances) == (2, 1)
    assert BuildSpec(name="m", task="embedding", engine_instances=3).engine_instances == 3
    assert local.to_dict()["engine_instances"] == 2  # the manifest records what was built


def test_engine_threads_are_an_onnx_runtime_setting() -> None:
    with pytest.raises(SpecError, match="`engine_threads` = 4 .*target `tensorrt`"):
        BuildSpec(name="m", task="embedding", target="tensorrt", engine_threads=4)
    spec = BuildSpec(name="m", task="embedding", target="onnxruntime", engine_threads=4)
    assert spec.engine_threads == 4


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("name", "bad name!", "letters, digits"),
        ("name", "", "letters, digits"),
        ("task", "translation", "embedding, classification"),
        ("target", "gpu", "local, onnxruntime, tensorrt"),
        ("precision", "int4", "fp32, fp16, bf16"),
        ("max_batch_size", 0, "[1, 4096]"),
        ("max_batch_size", True, "[1, 4096]"),
        ("max_seq_len", 2, "[4, 32768]"),
        ("max_queue_delay_us", -1, "[0, 10000000]"),
        ("engine_instances", -1, "[1, 64]"),
        ("version", 0, "[1, 2147483647]"),
        ("opset", 9, "[14, 21]"),
        ("preferred_batch_sizes", (4, 64), "[1, 32]"),
        ("model", Path("/does/not/exist"), "checkpoint directory"),
        # A TOML value of the wrong type is named like any other bad value, never a TypeError:
        # a string "false" must not pass as a true `trust_remote_code`.
        ("trust_remote_code", "false", "true or false"),
        ("version_compatible", 1, "true or false"),
        ("overwrite", "yes", "true or false"),
        ("name", 5, "letters, digits"),
        ("output", 5, "a path"),
        ("model", ["ckpt"], "a path"),
        ("reference_texts", 1.5, "a path"),
        ("preferred_batch_sizes", 8, "a list of integers"),
        ("preferred_batch_sizes", [4, 4, 2], "distinct sizes"),
        ("registry", 3, "models:/NAME/VERSION"),
    ],
)
def test_invalid_values_are_named(field: str, value: object, allowed: str) -> None:
    values = {"name": "m", "task": "embedding", field: value}
    with pytest.raises(SpecError) as info:
        BuildSpec.from_mapping(values)
    message = str(info.value)
    assert f"`{field}`" in message
    assert allowed in message


def test_message_shows_the_rejected_value() -> None:
    with pytest.raises(SpecError, match=r"`max_seq_len` = 100000 is not allowed"):
        BuildSpec(name="m", task="embedding", max_seq_len=100_000)


def test_fp16_needs_a_gpu_target() -> None:
    with pytest.raises(SpecError, match="`precision`.*target `local`"):
        BuildSpec(name="m", task="embedding", precision="fp16")
    assert BuildSpec(name="m", task="embedding", target="tensorrt", precision="fp16")


def test_unknown_and_missing_keys_are_rejected() -> None:
    with pytest.raises(SpecError, match="max_batch"):
        BuildSpec.from_mapping({"name": "m", "task": "embedding", "max_batch": 8})
    with pytest.raises(SpecError, match="`task`"):
        BuildSpec.from_mapping({"name": "m"})


def test_toml_file_with_overrides(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    path = tmp_path / "spec.toml"
    path.write_text(
        '[build]\nname = "sentiment"\ntask = "classification"\nmodel = "ckpt"\n'
        "max_batch_size = 16\npreferred_batch_sizes = [4, 8]\n"
    )
    spec = BuildSpec.from_toml(path, {"max_seq_len": 64})
    assert spec.model == tmp_path / "ckpt"  # relative to the file
    assert spec.max_batch_size == 16
    assert spec.preferred_batch_sizes == (4, 8)
    assert spec.max_seq_len == 64


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('build = 5\nname = "m"\n', "`build` = 5"),
        ('[build]\nname = "m"\ntask = "embedding"\n[runtime]\nx = 1\n', "runtime"),
        ('name = "m"\ntask = "embedding"\n[runtime]\nx = 1\n', "runtime"),
    ],
)
def test_toml_tables_other_than_build_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=problem):
        BuildSpec.from_toml(path)


def test_preferred_batch_sizes_are_kept_in_order() -> None:
    spec = BuildSpec(name="m", task="embedding", preferred_batch_sizes=(16, 4, 8))
    assert spec.preferred_batch_sizes == (4, 8, 16)


def test_unreadable_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("name = ")
    with pytest.raises(SpecError, match="bad.toml"):
        BuildSpec.from_toml(path)


def test_generation_runs_locally_or_as_a_tensorrt_plan() -> None:
    BuildSpec(name="g", task="generation", target="tensorrt", precision="fp16")
    with pytest.raises(SpecError, match="`target` = 'onnxruntime'.*`local` or `tensorrt`"):
        BuildSpec(name="g", task="generation", target="onnxruntime")
    with pytest.raises(SpecError, match="`precision`.*target `local`"):
        BuildSpec(name="g", task="generation", precision="bf16")
