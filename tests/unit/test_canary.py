"""A canary on disk (the public model as a router between two builds, and back) and its gates,
judged on what the router's metrics say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tritonize.cli import main
from tritonize.monitor.figures import Reading, Sample
from tritonize.repository.builds import HISTORY, serving
from tritonize.repository.canary import (
    Canary,
    canary_of,
    end_stale_canaries,
    router_config,
    serve_build,
    start_canary,
)
from tritonize.repository.checker import check_repository
from tritonize.repository.configs import from_text
from tritonize.repository.writer import build_repository
from tritonize.rollout.canary import CanaryPlan, judge
from tritonize.spec import BuildSpec
from tritonize.triton_models.canary import COMPARED, LATENCY, LATENCY_BUCKETS, REQUESTS, Split
from tritonize.triton_models.common import MODEL_VERSION

NAME = "sentiment"


def test_the_split_sends_the_share_to_the_candidate() -> None:
    split = Split.from_parameters(
        {"serving_entry": "m.v1", "serving_version": "1", "candidate_entry": "m.v2",
         "candidate_version": "2", "canary_share": "0.25"}
    )  # fmt: skip
    assert split.choose(0.0).version == 2 and split.choose(0.2499).version == 2
    assert split.choose(0.25).version == 1 and split.choose(0.99).version == 1


def test_the_router_keeps_the_interface_and_adds_the_build(repository: Path) -> None:
    config = router_config(repository, Canary(NAME, 1, 2, 0.1))
    public = from_text((repository / NAME / "config.pbtxt").read_text())
    assert config.backend == "python" and config.name == NAME
    assert list(config.input) == list(public.input)
    assert [o.name for o in config.output] == [*(o.name for o in public.output), MODEL_VERSION]
    assert config.max_batch_size == public.max_batch_size
    assert list(config.version_policy.specific.versions) == [1]  # named requests keep working
    assert config.parameters["candidate_entry"].string_value == f"{NAME}.v2"
    assert config.parameters["serving_entry"].string_value == f"{NAME}.v1"
    assert config.HasField("dynamic_batching")


def test_a_generator_router_streams(tmp_path: Path, tiny_decoder) -> None:  # type: ignore[no-untyped-def]
    repository = tmp_path / "repository"
    for version in (1, 2):
        build_repository(
            BuildSpec(name="gen", task="generation", model=tiny_decoder("llama-decoder"),
                      output=repository, max_seq_len=64, max_batch_size=4, version=version)
        )  # fmt: skip
    config = router_config(repository, Canary("gen", 1, 2, 0.5))
    assert config.model_transaction_policy.decoupled
    assert not config.HasField("dynamic_batching")
    assert [i.name for i in config.input if i.optional]  # optional fields stay optional


def test_a_canary_on_disk_and_back(repository: Path) -> None:
    history = (repository / NAME / HISTORY).read_text()
    start_canary(repository, Canary(NAME, 1, 2, 0.1))
    router = repository / NAME / "1"
    assert router.is_dir() and not router.is_symlink()
    assert (router / "model.py").read_text().count("canary") >= 1
    assert canary_of(repository, NAME) == Canary(NAME, 1, 2, 0.1)
    assert serving(repository, NAME).version == 1  # type: ignore[union-attr]
    check_repository(repository)  # a canary is a state check accepts

    serve_build(repository, NAME, 1)  # rolled back
    assert (repository / NAME / "1").is_symlink()
    assert canary_of(repository, NAME) is None
    assert (repository / NAME / HISTORY).read_text() == history  # no move recorded
    check_repository(repository)

    start_canary(repository, Canary(NAME, 1, 2, 0.1))
    serve_build(repository, NAME, 2)  # promoted
    assert serving(repository, NAME).version == 2  # type: ignore[union-attr]
    assert not (repository / NAME / "1").exists()
    assert [h["version"] for h in json.loads((repository / NAME / HISTORY).read_text())[
        "history"]] == [1, 2]  # fmt: skip
    check_repository(repository)


def test_versions_tell_a_canary_runs(repository: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start_canary(repository, Canary(NAME, 1, 2, 0.1))
    assert main(["versions", NAME, "--repository", str(repository)]) == 0
    assert "canary: build 2 answers 10% of `sentiment`'s requests, build 1 the rest" in (
        capsys.readouterr().out
    )
    assert main(["versions", NAME, "--repository", str(repository), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["serving"] == 1 and listed["canary"]["candidate"] == 2


def test_a_server_start_ends_a_canary_left_running(repository: Path) -> None:
    start_canary(repository, Canary(NAME, 1, 2, 0.5))
    assert end_stale_canaries(repository) == [Canary(NAME, 1, 2, 0.5)]
    assert serving(repository, NAME).version == 1  # type: ignore[union-attr]
    assert (repository / NAME / "1").is_symlink() and canary_of(repository, NAME) is None
    assert end_stale_canaries(repository) == []


# -- gates ----------------------------------------------------------------------------------


def reading(
    builds: dict[int, tuple[int, int, float]], agree: int = 0, disagree: int = 0
) -> Reading:
    """The router's series: per build (ok, failed, every request's seconds)."""
    samples = []
    for version, (ok, failed, seconds) in builds.items():
        labels = {"model": NAME, "build": str(version), "pid": "7"}
        samples += [
            Sample(REQUESTS, {**labels, "outcome": "ok"}, ok),
            Sample(REQUESTS, {**labels, "outcome": "failed"}, failed),
        ]
        samples += [
            Sample(f"{LATENCY}_bucket", {**labels, "le": str(le)}, (ok + failed) * (seconds <= le))
            for le in LATENCY_BUCKETS
        ]
        samples.append(Sample(f"{LATENCY}_bucket", {**labels, "le": "+Inf"}, ok + failed))
    for outcome, count in (("agree", agree), ("disagree", disagree)):
        samples.append(Sample(COMPARED, {"model": NAME, "pid": "7", "outcome": outcome}, count))
    return Reading(samples)


ZERO = reading({1: (0, 0, 0.01), 2: (0, 0, 0.01)})
PLAN = CanaryPlan(share=0.1, seconds=60, min_agreement=0.95)


def test_a_healthy_canary_breaks_no_gate() -> None:
    now = reading({1: (900, 0, 0.02), 2: (100, 0, 0.02)}, agree=100)
    judgement = judge(ZERO, now, NAME, 1, 2, PLAN)
    assert judgement.breaches == ()
    assert judgement.candidate.requests == 100 and judgement.serving.requests == 900
    assert judgement.candidate.p95_s == pytest.approx(judgement.serving.p95_s)
    assert "agreement 100/100 (100.0%)" in judgement.describe()


def test_each_gate_names_its_figures() -> None:
    failing = judge(ZERO, reading({1: (900, 0, 0.02), 2: (95, 5, 0.02)}, agree=95), NAME, 1, 2,
                    PLAN)  # fmt: skip
    assert [b.split(":")[0] for b in failing.breaches] == ["failures"]
    assert (
        "5.0% of the candidate's requests failed, 0.0% of the serving build's"
        in (failing.breaches[0])
    )
    slow = judge(ZERO, reading({1: (900, 0, 0.02), 2: (100, 0, 0.2)}, agree=100), NAME, 1, 2,
                 PLAN)  # fmt: skip
    assert [b.split(":")[0] for b in slow.breaches] == ["p95"]
    unlike = judge(ZERO, reading({1: (900, 0, 0.02), 2: (100, 0, 0.02)}, agree=50, disagree=50),
                   NAME, 1, 2, PLAN)  # fmt: skip
    assert unlike.breaches == (
        "agreement: 50 of 100 canary requests answered alike by the serving build (50.0%; at "
        "least 95% wanted)",
    )


def test_too_few_requests_judge_no_latency_nor_agreement() -> None:
    few = reading({1: (900, 0, 0.02), 2: (5, 0, 0.5)}, agree=1, disagree=4)
    assert judge(ZERO, few, NAME, 1, 2, PLAN).breaches == ()


def test_the_gates_count_from_the_canary_start() -> None:
    before = reading({1: (1000, 50, 0.02), 2: (0, 0, 0.02)})
    after = reading({1: (1900, 50, 0.02), 2: (100, 0, 0.02)})
    judgement = judge(before, after, NAME, 1, 2, PLAN)
    assert judgement.serving.failures == 0 and judgement.serving.requests == 900


@pytest.mark.parametrize("share", ["0", "100", "ten"])
def test_a_canary_share_outside_1_to_99_percent_is_refused(
    share: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["rollout", NAME, "--to", "2", "--canary", share])
    assert "expected a percentage between 0 and 100" in capsys.readouterr().err
