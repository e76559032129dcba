"""tune's logic without a server: settings read from and written into engine configs, the
sweep's space, the objective, the choice of the winner, and the build it is written as."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tritonize.bench.load import LoadResult
from tritonize.bench.space import Knobs, Space
from tritonize.bench.tune import Point, Result, best_point, client_figures, parse_slo
from tritonize.errors import RepositoryConflictError, RepositoryError, SpecError
from tritonize.loadtest.slo import evaluate
from tritonize.repository import configs
from tritonize.repository.builds import build_versions, serving
from tritonize.repository.checker import check_repository
from tritonize.repository.derive import derive_build
from tritonize.repository.golden import GOLDEN
from tritonize.repository.manifest import integrity_problems, read_manifest
from tritonize.spec import BuildSpec, Target
from tritonize.tasks.build import StepNames

from .conftest import NAME

TUNED = Knobs(max_queue_delay_us=500, preferred_batch_sizes=(4, 8), engine_instances=3,
              engine_threads=1)  # fmt: skip


def engine(target: str, **spec: object) -> configs.ModelConfig:
    built = BuildSpec(name="m", task="classification", target=target, **spec)  # type: ignore[arg-type]
    return configs.engine_config(built, "logits", (3,), pad_token_id=0)


@pytest.mark.parametrize(
    ("target", "parameter"),
    [("local", "intra_op_threads"), ("onnxruntime", "intra_op_thread_count")],
)
def test_knobs_written_into_a_config_read_back_equal(target: str, parameter: str) -> None:
    config = engine(target)
    TUNED.apply(config)
    assert Knobs.of(config) == TUNED
    assert config.parameters[parameter].string_value == "1"
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]


def test_knobs_are_what_a_build_of_those_settings_writes() -> None:
    spec = {"max_queue_delay_us": 500, "preferred_batch_sizes": (4, 8), "engine_instances": 3,
            "engine_threads": 1}  # fmt: skip
    assert Knobs.of(engine("local", **spec)) == TUNED
    config = engine("local")
    TUNED.apply(config)
    assert config == engine("local", **spec)


def test_threads_zero_removes_the_setting_and_means_the_engines_default() -> None:
    config = engine("local", engine_threads=2)
    Knobs.of(engine("local")).apply(config)
    assert "intra_op_threads" not in config.parameters
    assert config == engine("local")


def test_the_space_is_every_combination_and_checks_its_values() -> None:
    space = Space(delays_us=(0, 100), preferred=((), (8,)), instances=(1, 2), threads=(0, 1))
    candidates = space.candidates(Target.LOCAL, max_batch_size=8)
    assert len(candidates) == len(set(candidates)) == 16
    with pytest.raises(SpecError, match=r"--preferred 16: each size must be 1..8"):
        Space(preferred=((16,),)).candidates(Target.LOCAL, max_batch_size=8)
    with pytest.raises(SpecError, match="TensorRT engine has no thread setting"):
        Space(threads=(0, 2)).candidates(Target.TENSORRT, max_batch_size=8)


@pytest.mark.parametrize(
    ("max_batch_size", "preferred"), [(32, {(), (8, 16)}), (8, {(), (8,)}), (4, {()})]
)
def test_the_default_preferred_sizes_fit_the_engine(
    max_batch_size: int, preferred: set[tuple[int, ...]]
) -> None:
    """Only sizes the user names are refused when too big; the defaults are cut to fit."""
    candidates = Space(instances=(1,)).candidates(Target.LOCAL, max_batch_size)
    assert {k.preferred_batch_sizes for k in candidates} == preferred


def test_the_objective_names_what_is_wrong() -> None:
    slo = parse_slo(["p95_ms=50", "min_batch_size=2"])
    assert (slo.p95_ms, slo.min_batch_size, slo.max_failure_ratio) == (50.0, 2.0, 0.0)
    assert parse_slo(["p99_ms=9", "max_failure_ratio=0.1"]).max_failure_ratio == 0.1
    with pytest.raises(SpecError, match=r"'p90_ms=5': unknown objective; allowed: .*p95_ms"):
        parse_slo(["p90_ms=5"])
    with pytest.raises(SpecError, match="`fast` is not a number"):
        parse_slo(["p95_ms=fast"])


@pytest.mark.parametrize(
    ("items", "problem"),
    [
        (["p95_ms=-1"], r"`p95_ms` = -1.0 .*a number above 0"),
        (["p99_ms=0"], r"`p99_ms` = 0.0 .*a number above 0"),
        (["p95_ms=nan"], r"`p95_ms` = nan"),
        (["p95_ms=inf"], r"`p95_ms` = inf"),
        (["max_queue_share=2"], r"`max_queue_share` = 2.0 .*between 0 and 1"),
        (["p95_ms=9", "max_failure_ratio=1.5"], r"`max_failure_ratio` = 1.5 .*between 0 and 1"),
        (["min_batch_size=0.5"], r"`min_batch_size` = 0.5 .*at least 1"),
        (["min_throughput_rps=-3"], r"`min_throughput_rps` = -3.0 .*at least 0"),
        (["p95_ms=100", "p95_ms=50"], r"--slo gives `p95_ms` twice"),
    ],
)
def test_an_objective_out_of_range_is_refused(items: list[str], problem: str) -> None:
    with pytest.raises(SpecError, match=problem):
        parse_slo(items)


def point(knobs: Knobs, rps: float, latency_s: float, failures: int = 0) -> Point:
    load = LoadResult(16, 1.0, np.full(int(rps), latency_s), failures, 0.0)
    client = client_figures(load)
    found = Point(knobs, 16, client, None)
    found.gates = evaluate(parse_slo(["p95_ms=100"]), client, None)
    return found


def test_the_winner_has_the_most_throughput_within_the_objective() -> None:
    slow_but_fast = point(TUNED, 500, 0.2)  # p95 200 ms: misses
    dropping = point(Knobs(0, (), 1, 0), 400, 0.01, failures=1)
    winner = point(Knobs(0, (), 2, 0), 300, 0.05)
    assert (
        best_point([slow_but_fast, dropping, winner, point(Knobs(9, (), 1, 0), 200, 0.01)])
        is winner
    )
    assert best_point([slow_but_fast, dropping]) is None


def test_a_winner_is_written_only_where_it_beat_the_serving_config_again() -> None:
    serving_config, other = Knobs(2000, (), 2, 0), Knobs(0, (), 1, 0)
    slo = parse_slo(["p95_ms=100"])

    def result(best: Knobs, gain: float | None) -> Result:
        return Result(NAME, 1, slo, serving_config, [], point(best, 100, 0.01), gain)

    assert result(other, 1.2).improves and result(other, None).improves
    assert not result(other, 0.97).improves  # the sweep's window was noise
    assert not result(serving_config, None).improves
    assert not Result(NAME, 1, slo, serving_config, [], None).improves


def test_a_derived_build_serves_the_same_files_under_its_own_names(repository: Path) -> None:
    """Build 3 from build 1: every step renamed and pinned to 3, the engine edited, weights
    linked not copied, manifests sealed and saying where it came from; build 1 untouched."""
    before = {p: p.read_bytes() for p in repository.glob(f"{NAME}*.v1/config.pbtxt")}
    models = derive_build(repository, NAME, 1, 3, TUNED.apply, TUNED.spec(), {"build": 1})
    new, old = StepNames(NAME, 3), StepNames(NAME, 1)
    assert models == [new.entry, new.tokenizer, new.engine, new.postprocess]
    assert build_versions(repository, NAME) == [1, 2, 3]
    assert serving(repository, NAME).version == 1  # type: ignore[union-attr]
    check_repository(repository, recover=False)
    entry = configs.from_text((repository / new.entry / "config.pbtxt").read_text())
    assert [(s.model_name, s.model_version) for s in entry.ensemble_scheduling.step] == [
        (new.tokenizer, 3), (new.engine, 3), (new.postprocess, 3)
    ]  # fmt: skip
    tuned = configs.from_text((repository / new.engine / "config.pbtxt").read_text())
    assert Knobs.of(tuned) == TUNED and tuned.parameters["ensemble"].string_value == new.entry
    untouched = configs.from_text((repository / old.engine / "config.pbtxt").read_text())
    TUNED.apply(untouched)
    untouched.name, untouched.parameters["ensemble"].string_value = new.engine, new.entry
    assert tuned == untouched  # nothing else changed
    assert json.loads((repository / new.entry / GOLDEN).read_text())["version"] == 3
    weights = next((repository / new.engine / "3").glob("model.onnx"))
    assert weights.stat().st_ino == (repository / old.engine / "1" / weights.name).stat().st_ino
    manifest = read_manifest(repository / new.engine / "3")
    assert manifest["spec"]["version"] == 3 and manifest["spec"]["engine_instances"] == 3
    assert manifest["derived_from"] == {"build": 1} and manifest["owner"] == NAME
    for model in models:
        assert integrity_problems(repository / model / "3", hashes=True) == []
    assert before == {p: p.read_bytes() for p in repository.glob(f"{NAME}*.v1/config.pbtxt")}
    assert read_manifest(repository / old.engine / "1")["spec"]["version"] == 1


def test_a_derived_build_never_replaces_one(repository: Path) -> None:
    with pytest.raises(RepositoryConflictError, match=r"build 2 of `sentiment` already exists.*3"):
        derive_build(repository, NAME, 1, 2, TUNED.apply, TUNED.spec(), {})
    with pytest.raises(RepositoryError, match="build 7 of `sentiment` is not in"):
        derive_build(repository, NAME, 7, 3, TUNED.apply, TUNED.spec(), {})
    assert build_versions(repository, NAME) == [1, 2]
    assert not [p for p in os.listdir(repository.parent) if ".staging-" in p]
