"""TensorRT plans for the bundled MiniLM: built, gated, deserialized, checked to load."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tritonize.engine.compat import EngineRuntime
from tritonize.repository.checker import check_repository
from tritonize.repository.manifest import read_manifest
from tritonize.repository.writer import build_repository
from tritonize.spec import BuildSpec
from tritonize.tasks.build import StepNames


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_minilm_plan_passes_its_gate_and_loads(precision: str, tmp_path: Path) -> None:
    from tritonize.engine.tensorrt import PlanRunner

    cache = tmp_path / "timing.cache"
    spec = BuildSpec(
        name="minilm", task="embedding", target="tensorrt", precision=precision,
        output=tmp_path / "repo", max_batch_size=16, max_seq_len=128, timing_cache=cache,
    )  # fmt: skip
    result = build_repository(spec)  # raises if the accuracy gate fails

    version = result.repository / StepNames("minilm", 1).engine / "1"
    manifest = read_manifest(version)
    runtime = EngineRuntime.detect()
    assert manifest["tensorrt"]["version"] == runtime.tensorrt_version
    assert manifest["tensorrt"]["compute_capability"] in runtime.compute_capabilities
    assert manifest["tensorrt"]["profile"] == {"min": [1, 1], "opt": [8, 128], "max": [16, 128]}
    assert min(manifest["accuracy_gate"].values()) >= (0.99999 if precision == "fp32" else 0.999)
    assert cache.stat().st_size > 0
    check_repository(result.repository, runtime)

    runner = PlanRunner(version / "model.plan")  # deserializes
    ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)
    vector = runner.run({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert vector.shape == (1, 384)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-2


def test_timing_cache_is_reused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The first build starts a cache and says so; the second reuses every byte the first
    wrote (a reuse message on the first build, or 0 bytes, fails)."""
    cache = tmp_path / "timing.cache"
    notes, sizes = [], []
    for attempt in range(2):
        spec = BuildSpec(
            name="minilm", task="embedding", target="tensorrt", output=tmp_path / f"r{attempt}",
            max_batch_size=4, max_seq_len=64, timing_cache=cache,
        )  # fmt: skip
        build_repository(spec)
        notes.append(capsys.readouterr().err)
        sizes.append(cache.stat().st_size)
    assert f"timing cache: {cache} is new" in notes[0] and "bytes reused" not in notes[0]
    reused = re.search(rf"timing cache: {re.escape(str(cache))} \((\d+) bytes reused\)", notes[1])
    assert reused, notes[1]
    assert int(reused.group(1)) == sizes[0] > 0
