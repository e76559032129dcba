"""diagnose's parts that need no server, and the runbook every alert and problem links to."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tritonize.cli import _parser
from tritonize.diagnose import KINDS, Diagnosis, Problem
from tritonize.diagnose.folder import Folder
from tritonize.diagnose.host import host_problems, memory
from tritonize.diagnose.problems import alert_anchor
from tritonize.diagnose.processes import DEFAULT_SHM_PREFIX, ServerProcess, scan_shm
from tritonize.diagnose.repository import config_differences, loaded_config, manifest_findings
from tritonize.diagnose.run import known_alerts
from tritonize.errors import TritonizeError
from tritonize.repository.configs import from_text

ROOT = Path(__file__).parents[2]
RUNBOOK = ROOT / "docs" / "runbook.md"
RULE_FILES = [ROOT / "monitoring" / "alerts.yml", ROOT / "monitoring" / "drift.yml"]


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives headings: lowercased, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6} +(.+?) *$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def rules() -> list[dict]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]  # fmt: skip


def test_every_runbook_url_points_to_a_section_of_the_runbook() -> None:
    sections = anchors(RUNBOOK.read_text())
    urls = [r["annotations"]["runbook_url"] for r in rules() if "runbook_url" in r["annotations"]]
    assert urls, "no alert names a runbook_url"
    for url in urls:
        path, _, anchor = url.partition("#")
        assert (ROOT / path).resolve() == RUNBOOK.resolve(), url
        assert anchor in sections, f"{url}: no such section in {RUNBOOK.name}"


def test_every_alert_has_a_section_named_after_it() -> None:
    sections = anchors(RUNBOOK.read_text())
    alerts = {r["alert"] for r in rules()}
    assert {"TritonDown", "TritonizeInputDrift", "TritonizeProbeFailing"} <= alerts
    assert sorted(a for a in alerts if a.lower() not in sections) == []
    assert known_alerts() == alerts  # diagnose links each firing one to its own section


def test_every_problem_diagnose_can_report_has_a_section() -> None:
    sections = anchors(RUNBOOK.read_text())
    assert sorted(kind for kind in KINDS if kind not in sections) == []
    text = RUNBOOK.read_text()
    for kind in KINDS:  # each section says what it is, why, how to confirm and what to do
        body = text.split(f"### {kind}\n", 1)[1].split("\n### ", 1)[0]
        for part in ("**Symptom:**", "**Likely causes:**", "**Confirm:**", "**Fix:**"):
            assert part in body, f"section {kind}: no {part}"


def test_a_problem_of_an_unknown_kind_is_refused_and_known_ones_link_their_section() -> None:
    with pytest.raises(ValueError, match="unknown problem kind `stub-gone`"):
        Problem("stub-gone", "m", "x")
    problem = Problem("stub-dead", "victim_postprocess", "0 of 1 stub alive\nmore")
    assert problem.describe() == (
        "  [stub-dead] victim_postprocess: 0 of 1 stub alive\n      see docs/runbook.md#stub-dead"
    )
    known = frozenset({"TritonizeInputDrift"})
    assert alert_anchor("TritonizeInputDrift", known) == "tritonizeinputdrift"
    assert alert_anchor("MyOwnAlert", known) == "alert-firing"
    firing = Problem("alert-firing", "TritonizeInputDrift", "x", "tritonizeinputdrift")
    assert firing.to_dict()["runbook"] == "docs/runbook.md#tritonizeinputdrift"


def test_exit_codes(tmp_path: Path) -> None:
    diagnosis = Diagnosis(Folder(tmp_path))
    assert diagnosis.exit_code == 0
    diagnosis.add(Problem("shm-leaked", "/dev/shm/x*", "1 region"))
    diagnosis.add(Problem("shm-leaked", "/dev/shm/x*", "the same subject again"))
    assert diagnosis.exit_code == 1 and len(diagnosis.problems) == 1
    diagnosis.reachable = False
    assert diagnosis.exit_code == 2


def test_out_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(TritonizeError, match="`--out` .* is a file"):
        Folder(tmp_path / "file")


# -- configs ----------------------------------------------------------------------------------
ON_DISK = """name: "m_engine"
backend: "python"
max_batch_size: 8
input { name: "input_ids" data_type: TYPE_INT64 dims: -1 allow_ragged_batch: true }
output { name: "logits" data_type: TYPE_FP32 dims: 3 }
instance_group { count: 1 kind: KIND_CPU }
dynamic_batching { preferred_batch_size: 8 max_queue_delay_microseconds: 2000 }
parameters { key: "max_seq_len" value { string_value: "64" } }
"""
# As Triton 2.51 serves it: every default filled in, and fields this protobuf may not know.
SERVED = {
    "name": "m_engine", "platform": "", "backend": "python", "runtime": "",
    "version_policy": {"latest": {"num_versions": 1}}, "max_batch_size": 8,
    "input": [{"name": "input_ids", "data_type": "TYPE_INT64", "format": "FORMAT_NONE",
               "dims": [-1], "is_shape_tensor": False, "allow_ragged_batch": True,
               "optional": False, "is_non_linear_format_io": False}],
    "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [3], "label_filename": "",
                "is_shape_tensor": False, "is_non_linear_format_io": False}],
    "dynamic_batching": {"preferred_batch_size": [8], "max_queue_delay_microseconds": 2000,
                         "preserve_ordering": False, "priority_levels": 0,
                         "default_priority_level": 0, "priority_queue_policy": {}},
    "instance_group": [{"name": "m_engine_0", "kind": "KIND_CPU", "count": 1, "gpus": [],
                        "secondary_devices": [], "profile": [], "passive": False,
                        "host_policy": ""}],
    "default_model_filename": "model.py", "cc_model_filenames": {}, "metric_tags": {},
    "parameters": {"max_seq_len": {"string_value": "64"}}, "model_warmup": [],
    "a_field_of_a_later_triton": {"x": 1},
}  # fmt: skip


def test_a_served_config_with_triton_defaults_equals_its_file() -> None:
    assert config_differences(from_text(ON_DISK), loaded_config(SERVED)) == []


def test_each_field_that_differs_is_named_with_both_values() -> None:
    edited = (
        ON_DISK.replace("max_queue_delay_microseconds: 2000", "max_queue_delay_microseconds: 500")
        .replace('string_value: "64"', 'string_value: "128"')
        .replace("count: 1", "count: 2")
        .replace("dims: 3", "dims: 4")
    )
    found = config_differences(from_text(edited), loaded_config(SERVED))
    assert sorted(found) == sorted([
        "dynamic_batching.max_queue_delay_microseconds: 500 on disk, 2000 served",
        "parameters['max_seq_len'].string_value: '128' on disk, '64' served",
        "instance_group[0].count: 2 on disk, 1 served",
        "output[0].dims: [4] on disk, [3] served",
    ])  # fmt: skip


def test_tensors_and_parameters_only_on_one_side_are_named() -> None:
    more = ON_DISK + 'input { name: "attention_mask" data_type: TYPE_INT64 dims: -1 }\n'
    more += 'parameters { key: "pad_token_id" value { string_value: "0" } }\n'
    found = config_differences(from_text(more), loaded_config(SERVED))
    assert found == ["input: 2 on disk, 1 served", "parameters['pad_token_id']: on disk only"]


# -- manifests --------------------------------------------------------------------------------
def version_dir(tmp_path: Path, files: list[str], versions: dict[str, str]) -> Path:
    directory = tmp_path / "m_engine" / "1"
    directory.mkdir(parents=True)
    for name in files:
        (directory / name).write_text("x")
    (directory / "manifest.json").write_text(json.dumps({"versions": versions}))
    return directory


def test_the_packages_a_version_imports_are_compared_with_the_serving_ones(tmp_path: Path) -> None:
    built = {"numpy": "1.26.4", "onnxruntime": "1.32.0", "tokenizers": "0.23.0", "torch": "2.13.0"}
    directory = version_dir(tmp_path, ["model.onnx", "model.py"], built)
    serving = {"numpy": "1.26.4", "onnxruntime": "1.20.1", "tokenizers": "0.21.0"}
    record, mismatches, changed = manifest_findings(directory, serving)
    # tokenizers: no tokenizer.json here; torch: a build-time package
    assert mismatches == ["onnxruntime 1.32.0 at build, 1.20.1 serving"]
    assert record["compared"] == ["numpy", "onnxruntime"] and changed == []
    _, missing, _ = manifest_findings(directory, {"numpy": "1.26.4", "onnxruntime": None})
    assert missing == ["onnxruntime 1.32.0 at build, none serving"]


def test_a_version_without_a_manifest_has_nothing_to_compare(tmp_path: Path) -> None:
    directory = tmp_path / "hand_made" / "1"
    directory.mkdir(parents=True)
    assert manifest_findings(directory, {"numpy": "2.0.0"}) == ({"manifest": None}, [], [])


# -- shared memory and the host ---------------------------------------------------------------
def test_regions_no_live_server_or_stub_owns_are_leaked_grouped_by_run(tmp_path: Path) -> None:
    live = "tritonize_4242_0a1b2c3d_"
    dead = "tritonize_4242_deadbeef_"
    names = [f"{live}r1", f"{dead}r1", f"{dead}r2", f"{DEFAULT_SHM_PREFIX}7", "unrelated"]
    for name in names:
        (tmp_path / name).write_bytes(b"\0" * 10)
    server = ServerProcess(pid=1, http_port=8000, metrics_port=8002, shm_prefix=live,
                           repository=None, log_file=None)  # fmt: skip
    scan = scan_shm([server], shm_dir=tmp_path)
    assert [r.path.name for r in scan.regions] == sorted(names[:4])
    assert {r.path.name: r.owner for r in scan.regions}[f"{live}r1"] == "tritonserver 1"
    groups = scan.leaked_by_prefix()
    assert sorted(groups) == [DEFAULT_SHM_PREFIX, dead]
    assert [r.path.name for r in groups[dead]] == [f"{dead}r1", f"{dead}r2"]


def test_low_memory_and_shm_space_are_problems() -> None:
    gib = 2**30
    facts = {"memory": {"MemTotal": 24 * gib, "MemAvailable": 1 * gib},
             "shm": {"total": 10 * gib, "free": 9 * gib}}  # fmt: skip
    assert [p.kind for p in host_problems(facts)] == ["host-memory-low"]
    facts["shm"]["free"] = gib // 2
    assert [p.kind for p in host_problems(facts)] == ["host-memory-low", "shm-space-low"]
    assert host_problems({"memory": {}, "shm": {}}) == []


def test_meminfo_is_read_in_bytes(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree: 1 kB\nMemAvailable:   12288000 kB\n")
    assert memory(meminfo) == {"MemTotal": 24576000 * 1024, "MemAvailable": 12288000 * 1024}


# -- the command line -------------------------------------------------------------------------
def test_the_command_line_reaches_the_options() -> None:
    args = _parser().parse_args(
        ["diagnose", "--url", "10.0.0.5:8000", "--out", "d", "--verify-requests", "0"]
    )
    assert (args.url, args.out, args.verify_requests, args.sample) == (
        "10.0.0.5:8000",
        Path("d"),
        0,
        2.0,
    )


@pytest.mark.parametrize("flag,value", [("--pending-limit", "0"), ("--verify-requests", "-1"),
                                        ("--sample", "0"), ("--log-lines", "x")])  # fmt: skip
def test_bad_limits_are_refused_naming_them(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["diagnose", flag, value])
    assert exit_.value.code == 2
    assert flag in capsys.readouterr().err
