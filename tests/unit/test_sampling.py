"""Opt-in request sampling: off unless asked, settings checked by name, the rate kept, files
rotated under their cap, each line a request's inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tritonize.triton_models.sampling import (
    DEFAULT_MAX_BYTES,
    RequestSampler,
    Sampling,
    SamplingError,
)


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"TRITONIZE_SAMPLE_RATE": ""},
        {"TRITONIZE_SAMPLE_RATE": "0", "TRITONIZE_SAMPLE_DIR": "x"},
    ],
)
def test_sampling_is_off_unless_a_rate_is_set(environ: dict[str, str]) -> None:
    assert Sampling.from_environment(environ) is None


def test_settings_round_trip_through_the_environment(tmp_path: Path) -> None:
    settings = Sampling(0.25, tmp_path, 4096)
    assert Sampling.from_environment(settings.environment()) == Sampling(0.25, tmp_path, 4096)
    only_rate = {"TRITONIZE_SAMPLE_RATE": "0.5", "TRITONIZE_SAMPLE_DIR": str(tmp_path)}
    assert Sampling.from_environment(only_rate) == Sampling(0.5, tmp_path, DEFAULT_MAX_BYTES)


@pytest.mark.parametrize(
    ("environ", "named"),
    [({"TRITONIZE_SAMPLE_RATE": "0.1"}, "TRITONIZE_SAMPLE_DIR"),
     ({"TRITONIZE_SAMPLE_RATE": "1.5", "TRITONIZE_SAMPLE_DIR": "d"}, "TRITONIZE_SAMPLE_RATE=1.5"),
     ({"TRITONIZE_SAMPLE_RATE": "often", "TRITONIZE_SAMPLE_DIR": "d"}, "'often'"),
     ({"TRITONIZE_SAMPLE_RATE": "0.1", "TRITONIZE_SAMPLE_DIR": "d",
       "TRITONIZE_SAMPLE_MAX_BYTES": "12"}, "TRITONIZE_SAMPLE_MAX_BYTES=12"),
     ({"TRITONIZE_SAMPLE_RATE": "0.1", "TRITONIZE_SAMPLE_DIR": "d",
       "TRITONIZE_SAMPLE_MAX_BYTES": "1e6"}, "'1e6'")],
)  # fmt: skip
def test_unusable_settings_name_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SamplingError, match=named.replace(".", r"\.")):
        Sampling.from_environment(environ)


def lines(directory: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(directory.iterdir()) for line in f.open()]


def test_each_kept_request_is_one_json_line_of_its_inputs(tmp_path: Path) -> None:
    sampler = RequestSampler("rerank", Sampling(1.0, tmp_path / "samples"), seed=0)
    inputs = {"QUERY": ["где вокзал?", "q2"], "TEXT": ['line\nbreak "quoted"', "t2"]}
    assert sampler.offer(inputs)
    sampler.close()
    [record] = lines(tmp_path / "samples")
    assert record["model"] == "rerank" and record["inputs"] == inputs
    assert record["time"] > 1.7e9
    assert (tmp_path / "samples").stat().st_mode & 0o777 == 0o700  # users' text


def test_the_rate_is_kept(tmp_path: Path) -> None:
    sampler = RequestSampler("m", Sampling(0.1, tmp_path), seed=3)
    kept = sum(sampler.offer({"TEXT": [f"text {i}"]}) for i in range(5000))
    sampler.close()
    assert 400 <= kept <= 600  # binomial(5000, 0.1): mean 500, sd 21
    assert len(lines(tmp_path)) == kept


def test_files_rotate_and_stay_under_the_cap(tmp_path: Path) -> None:
    cap = 8192
    sampler = RequestSampler("m", Sampling(1.0, tmp_path, cap), seed=0)
    for i in range(2000):
        sampler.offer({"TEXT": [f"request number {i:05d} " + "x" * 40]})
    sampler.close()
    files = sorted(tmp_path.iterdir())
    assert len(files) == 5  # the current file and four rotated ones
    assert sum(f.stat().st_size for f in files) <= cap
    current = [f for f in files if f.suffix == ".jsonl"]
    newest = json.loads(current[0].read_text().splitlines()[-1])["inputs"]["TEXT"][0]
    assert newest.startswith("request number 01999")  # the newest are kept, the oldest go
    kept = [r["inputs"]["TEXT"][0] for r in lines(tmp_path)]
    assert not any(text.startswith("request number 00000") for text in kept)


def serve_sampling(argv: list[str]) -> Sampling | None:
    from tritonize.cli import _parser, serve_config

    return serve_config(_parser().parse_args(["serve", "repo", *argv])).sampling


def test_serve_samples_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("TRITONIZE_SAMPLE_RATE", "TRITONIZE_SAMPLE_DIR", "TRITONIZE_SAMPLE_MAX_BYTES"):
        monkeypatch.delenv(variable, raising=False)
    assert serve_sampling([]) is None
    asked = ["--sample-rate", "0.02", "--sample-dir", str(tmp_path), "--sample-max-mb", "2"]
    assert serve_sampling(asked) == Sampling(0.02, tmp_path, 2 * 2**20)
    monkeypatch.setenv("TRITONIZE_SAMPLE_RATE", "0.5")  # a container's way to ask
    assert serve_sampling([]) == Sampling(0.5, Path("samples"), DEFAULT_MAX_BYTES)


def test_serve_names_an_unusable_rate() -> None:
    from tritonize.errors import SpecError

    with pytest.raises(SpecError, match=r"request sampling: TRITONIZE_SAMPLE_RATE=2\.0"):
        serve_sampling(["--sample-rate", "2"])
