"""The benchmark scripts refuse bad arguments before any work, naming the argument."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).parents[2] / "scripts"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def refused(module: ModuleType, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exited:
        module.parse_args(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--concurrency", "0"], "--concurrency"),
        (["--rounds", "0"], "--rounds"),
        (["--seconds", "-1"], "--seconds"),
        (["--warmup", "-1"], "--warmup"),
        (["--protocols", "ftp"], "--protocols"),
        (["--batches", "0"], "--batches"),
        (["--peers", "bogus"], "--peers"),
        (["--repository", "/nonexistent"], "--repository"),
    ],
)
def test_benchmark_serving_refuses(
    argv: list[str], named: str, capsys: pytest.CaptureFixture
) -> None:
    assert named in refused(load("benchmark_serving"), argv, capsys)


def test_benchmark_serving_names_a_model_the_repository_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    error = refused(
        load("benchmark_serving"), ["--repository", str(tmp_path), "--name", "x"], capsys
    )
    assert "no build 1 of `x`" in error
    args = load("benchmark_serving").parse_args(["--concurrency", "1", "16", "--peers"])
    assert (args.concurrency, args.peers) == ([1, 16], [])


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--texts", "10"], "--texts"),
        (["--heads", "12"], "--heads"),
        (["--heads", "-1"], "--heads"),
        (["--ffn", "1.5"], "--ffn"),
        (["--ffn", "1.0"], "--ffn"),
        (["--unstructured", "-0.1"], "--unstructured"),
        (["--calibration-texts", "0"], "--calibration-texts"),
        (["--min-speedup", "-1"], "--min-speedup"),
        (["--int8-fp32-nodes", "-1"], "--int8-fp32-nodes"),
        (["--rounds", "0"], "--rounds"),
        (["--runs", "0"], "--runs"),
        (["--max-seq-len", "0"], "--max-seq-len"),
    ],
)
def test_benchmark_pruning_refuses(
    argv: list[str], named: str, capsys: pytest.CaptureFixture
) -> None:
    assert named in refused(load("benchmark_pruning"), argv, capsys)
