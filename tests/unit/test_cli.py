"""The CLI is a thin layer: exit codes and messages of build and check."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tritonize.cli import _dispatch, _parser, main


def test_build_then_check(
    classifier_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(f'name = "sentiment"\ntask = "classification"\nmodel = "{classifier_dir}"\n')
    output = tmp_path / "repo"
    assert (
        main(["build", "--config", str(spec), "--output", str(output), "--max-batch-size", "4"])
        == 0
    )
    assert (
        "built sentiment.v1, sentiment_tokenizer.v1, sentiment_engine.v1" in capsys.readouterr().out
    )
    assert main(["check", str(output)]) == 0
    assert "ok  sentiment_engine.v1" in capsys.readouterr().out

    config = output / "sentiment_engine.v1" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 4", "max_batch_size: 2"))
    assert main(["check", str(output)]) == 1
    assert "step 2 (`sentiment_engine.v1`): max_batch_size 2" in capsys.readouterr().err


def test_invalid_flag_value_is_named(capsys: pytest.CaptureFixture) -> None:
    assert main(["build", "--task", "embedding", "--name", "no spaces allowed"]) == 1
    assert "`name` = 'no spaces allowed' is not allowed" in capsys.readouterr().err


def test_fp16_on_the_local_target_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["build", "--task", "embedding", "--name", "m", "--output", str(tmp_path / "r")]
    assert main([*args, "--target", "local", "--precision", "fp16"]) == 1
    assert "`precision` = 'fp16'" in capsys.readouterr().err


def test_tensorrt_flags_reach_the_spec(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["build", "--task", "embedding", "--name", "m", "--output", str(tmp_path / "r"),
            "--target", "tensorrt", "--max-seq-len", "128"]  # fmt: skip
    assert main([*args, "--opt-seq-len", "512"]) == 1
    assert "`opt_seq_len` = 512 is not allowed: expected an integer in [1, 128]" in (
        capsys.readouterr().err
    )
    assert main([*args, "--hardware-compatibility", "ampere_plus", "--version-compatible"]) == 1
    assert "needs the `tensorrt` Python package" in capsys.readouterr().err  # no GPU here
    assert not (tmp_path / "r").exists()


def fail_with(error: BaseException) -> argparse.Namespace:
    def run(_args: argparse.Namespace) -> int:
        raise error

    return argparse.Namespace(run=run)


def test_unexpected_errors_are_one_line_unless_debugging(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _dispatch(fail_with(ZeroDivisionError("division by zero"))) == 1
    err = capsys.readouterr().err
    assert err == (
        "error: unexpected ZeroDivisionError: division by zero (TRITONIZE_DEBUG=1 shows where)\n"
    )
    monkeypatch.setenv("TRITONIZE_DEBUG", "1")
    assert _dispatch(fail_with(ZeroDivisionError("division by zero"))) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith(
        "error: unexpected ZeroDivisionError: division by zero\n"
    )


def test_ctrl_c_exits_130(capsys: pytest.CaptureFixture) -> None:
    assert _dispatch(fail_with(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_help_shows_defaults() -> None:
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    loadtest = commands.choices["loadtest"].format_help()
    assert "(default: steady)" in loadtest and "(default: reports/loadtest)" in loadtest
    assert "(default: 64)" in commands.choices["generate"].format_help()
    assert "(default: None)" not in commands.choices["build"].format_help()


def test_a_missing_name_says_where_to_give_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('[build]\ntask = "embedding"\n')
    assert main(["build", "--config", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "`name` is required: pass --name NAME" in err and "None" not in err


def test_tiny_generation_model_script_writes_a_working_checkpoint(tmp_path: Path) -> None:
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    script = Path(__file__).parents[2] / "scripts" / "tiny_generation_model.py"
    for family in ("llama", "gpt2"):
        dest = tmp_path / family
        subprocess.run([sys.executable, str(script), str(dest), "--family", family], check=True,
                       capture_output=True, timeout=300)  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(dest).eval()
        assert model.config.model_type == family
        tokenizer = AutoTokenizer.from_pretrained(dest)
        ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
        assert tokenizer.decode(ids[0], skip_special_tokens=True) == "Once upon a time"
        with torch.no_grad():
            assert model(ids).logits.shape == (1, ids.shape[1], tokenizer.vocab_size)
        assert GenerationConfig.from_pretrained(dest).eos_token_id is not None


@pytest.mark.parametrize(
    "argv",
    [
        ["infer", "m", "ok", "\udcff\udcfe"],  # bytes ff fe as Python decodes a non-UTF-8 argv
        ["infer", "m", "ok", "--question", "why\udcff"],
        ["infer", "m", "ok", "--input", "QUERY=\udcff"],
        ["generate", "m", "\udcffprompt"],
    ],
)
def test_text_that_is_not_utf8_is_named(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(argv)
    assert exited.value.code == 2
    assert "is not valid UTF-8" in capsys.readouterr().err
