"""Registry URIs, checkpoint discovery in a registered version's files, and the spec field.

Nothing here needs a tracking server: the live registry is tests/integration/test_registry.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from helpers import free_ports
from tritonize.cli import main
from tritonize.errors import RegistryError, SpecError, TritonizeError
from tritonize.registry import (
    ModelUri,
    find_checkpoint,
    flatten_spec,
    is_model_uri,
    resolve_model,
    tracking_uri,
)
from tritonize.registry.checkpoint import JOINED
from tritonize.registry.uri import check_alias
from tritonize.spec import BuildSpec

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("models:/sentiment/1", ModelUri("sentiment", version=1)),
        ("models:/sentiment/12", ModelUri("sentiment", version=12)),
        ("models:/team.sentiment-v2/3", ModelUri("team.sentiment-v2", version=3)),
        ("models:/sentiment@champion", ModelUri("sentiment", alias="champion")),
        ("models:/my model@canary_2", ModelUri("my model", alias="canary_2")),
    ],
)
def test_both_uri_forms_parse(uri: str, expected: ModelUri) -> None:
    parsed = ModelUri.parse(uri)
    assert parsed == expected
    assert str(parsed) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "sentiment/1",
        "models:/sentiment",
        "models:/sentiment/",
        "models:/sentiment/0",
        "models:/sentiment/latest",
        "models:/sentiment/Production",
        "models:/sentiment/1/model",
        "models:/sentiment@",
        "models:/sentiment@champion/model",
        "models://sentiment/1",
        "runs:/abc/model",
    ],
)
def test_a_malformed_uri_names_both_allowed_forms(uri: str) -> None:
    with pytest.raises(RegistryError) as info:
        ModelUri.parse(uri)
    message = str(info.value)
    assert repr(uri) in message
    assert "models:/NAME/VERSION" in message and "models:/NAME@ALIAS" in message
    assert isinstance(info.value, TritonizeError)


def test_model_uris_are_told_from_paths() -> None:
    assert is_model_uri("models:/sentiment@champion")
    assert is_model_uri("models:/broken")  # meant as one: parsed, it is refused with the forms
    assert not is_model_uri("./models/sentiment")
    assert not is_model_uri(None)


@pytest.mark.parametrize("alias", ["latest", "LATEST", "v3", "with space", "", "a/b"])
def test_aliases_mlflow_refuses_are_refused_first(alias: str) -> None:
    with pytest.raises(RegistryError, match="alias"):
        check_alias(alias)


def test_allowed_alias_passes() -> None:
    assert check_alias("champion-2_b") == "champion-2_b"


def _checkpoint(directory: Path, weights: str = "model.safetensors") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text("{}")
    (directory / weights).write_bytes(b"\0")
    (directory / "tokenizer.json").write_text("{}")
    return directory


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin",
                                     "model.safetensors.index.json"])  # fmt: skip
def test_a_checkpoint_at_the_root_is_found(tmp_path: Path, weights: str) -> None:
    assert find_checkpoint(_checkpoint(tmp_path, weights)) == tmp_path


def test_a_checkpoint_in_one_sub_folder_is_found(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "checkpoint")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("trained on ...")
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint"


def test_two_checkpoints_are_refused_by_name(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "base")
    _checkpoint(tmp_path / "tuned")
    with pytest.raises(RegistryError, match=r"2 checkpoints \(`base/`, `tuned/`\)"):
        find_checkpoint(tmp_path)


def test_files_that_are_no_checkpoint_are_described(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(b"\0")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("a,b\n")
    with pytest.raises(RegistryError) as info:
        find_checkpoint(tmp_path)
    message = str(info.value)
    assert "found `data/` (train.csv), `model.pkl`" in message
    assert "config.json" in message and "mlflow.transformers" in message


def test_a_config_without_weights_is_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RegistryError, match="found `config.json`; expected"):
        find_checkpoint(tmp_path)


def _transformers_model(root: Path, with_weights: bool = True) -> Path:
    """The layout mlflow.transformers.log_model writes (MLflow 3)."""
    flavor: dict[str, object] = {"source_model_name": "org/tiny", "task": "text-classification"}
    if with_weights:
        _checkpoint(root / "model").joinpath("tokenizer.json").unlink()
        tokenizer = root / "components" / "tokenizer"
        tokenizer.mkdir(parents=True)
        (tokenizer / "tokenizer.json").write_text('{"version": "1.0"}')
        (tokenizer / "tokenizer_config.json").write_text("{}")
        flavor.update(model_binary="model", components=["tokenizer"])
    mlmodel = {"flavors": {"python_function": {}, "transformers": flavor}}
    (root / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    (root / "requirements.txt").write_text("transformers\n")
    return root


def test_an_mlflow_transformers_model_is_joined_into_one_checkpoint(tmp_path: Path) -> None:
    checkpoint = find_checkpoint(_transformers_model(tmp_path))
    assert checkpoint == tmp_path / JOINED
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert json.loads((checkpoint / "tokenizer.json").read_text()) == {"version": "1.0"}
    assert find_checkpoint(tmp_path) == checkpoint  # a second look reuses the links


def test_an_mlflow_transformers_model_without_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="without weights .*`org/tiny`.*save_pretrained"):
        find_checkpoint(_transformers_model(tmp_path, with_weights=False))


def test_the_default_store_is_sqlite_in_the_working_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking_uri() == "http://mlflow.internal:5000"


def test_an_unreachable_server_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    (port,) = free_ports(1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(RegistryError, match=f"`http://127.0.0.1:{port}` cannot be reached"):
        resolve_model("models:/sentiment/1")


def test_a_malformed_uri_is_refused_before_any_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    (port,) = free_ports(1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(RegistryError, match="models:/NAME/VERSION"):
        resolve_model("models:/sentiment/latest")


def test_the_spec_records_a_registry_version(tmp_path: Path) -> None:
    values = {"name": "m", "task": "classification", "model": tmp_path,
              "registry": "models:/sentiment/2"}  # fmt: skip
    spec = BuildSpec.from_mapping(values)
    recorded = spec.to_dict()
    assert recorded["registry"] == "models:/sentiment/2"
    assert BuildSpec.from_mapping(recorded) == spec
    assert BuildSpec(name="m", task="embedding").to_dict()["registry"] is None


def test_the_spec_registry_field_reads_from_toml(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    path = tmp_path / "spec.toml"
    path.write_text('[build]\nname = "m"\ntask = "classification"\nmodel = "ckpt"\n'
                    'registry = "models:/sentiment/7"\n')  # fmt: skip
    spec = BuildSpec.from_toml(path)
    assert spec.registry == "models:/sentiment/7"
    assert spec.model == tmp_path / "ckpt"


@pytest.mark.parametrize(
    ("registry", "allowed"),
    [
        ("models:/sentiment@champion", "not an alias"),
        ("models:/sentiment", "models:/NAME/VERSION"),
        ("sentiment/1", "models:/NAME/VERSION"),
        (3, "models:/NAME/VERSION"),
    ],
)
def test_the_spec_registry_field_is_validated(
    tmp_path: Path, registry: object, allowed: str
) -> None:
    with pytest.raises(SpecError, match="`registry`") as info:
        BuildSpec(name="m", task="classification", model=tmp_path, registry=registry)  # type: ignore[arg-type]
    assert allowed in str(info.value)


def test_a_registry_version_needs_its_checkpoint() -> None:
    with pytest.raises(SpecError, match="`model` = None .*downloaded from `models:/s/1`"):
        BuildSpec(name="m", task="classification", registry="models:/s/1")


def test_the_spec_flattens_to_string_params(tmp_path: Path) -> None:
    spec = BuildSpec(name="m", task="classification", model=tmp_path,
                     preferred_batch_sizes=(4, 8), registry="models:/s/1")  # fmt: skip
    params = flatten_spec(spec)
    assert all(isinstance(v, str) for v in params.values())
    assert params["task"] == "classification"
    assert params["max_batch_size"] == "32"
    assert params["preferred_batch_sizes"] == "[4, 8]"
    assert params["overwrite"] == "false"
    assert params["timing_cache"] == "null"
    assert params["registry"] == "models:/s/1"
    assert set(params) == set(spec.to_dict())


def test_a_registry_model_in_a_toml_spec_is_resolved_like_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (port,) = free_ports(1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    spec = tmp_path / "spec.toml"
    spec.write_text('[build]\nname = "m"\ntask = "classification"\nmodel = "models:/sentiment/1"\n')
    assert main(["build", "--config", str(spec), "--output", str(tmp_path / "out")]) == 1
    assert f"`http://127.0.0.1:{port}` cannot be reached" in capsys.readouterr().err
