"""Every task implements its whole contract, and one that does not is refused."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from tritonize.engine.accuracy import TOLERANCES as GATE_TOLERANCES
from tritonize.repository.configs import GENERATION_INPUTS, ensemble_config, public_outputs
from tritonize.spec import BuildSpec, Precision, Task
from tritonize.tasks import TASKS, TaskContract, TaskContractError, register
from tritonize.tasks.base import CONTRACT, missing_members, response_problem
from tritonize.tasks.tolerances import TOLERANCES
from tritonize.triton_models.generation import REQUEST_FIELDS, usable_window

TRITON_DTYPES = {
    "BYTES": np.object_, "BOOL": np.bool_, "FP32": np.float32, "INT32": np.int32,
    "INT64": np.int64, "UINT64": np.uint64,
}  # fmt: skip


def test_every_spec_task_is_registered() -> None:
    assert sorted(TASKS) == sorted(task.value for task in Task)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_task_implements_every_member_of_the_contract(name: str) -> None:
    task = TASKS[name]
    assert missing_members(type(task)) == []
    assert task.name == name
    assert task.inputs and task.outputs
    for tensor in (*task.inputs, *task.outputs):
        assert TRITON_DTYPES[tensor.datatype] is tensor.dtype, tensor


def test_an_incomplete_task_is_refused_at_registration() -> None:
    class NoGolden(TaskContract):
        name = "incomplete"
        inputs = TASKS["embedding"].inputs
        outputs = TASKS["embedding"].outputs
        build = TASKS["embedding"].build

        def call(self, client: Any, model: str, text: str, metadata: dict[str, Any]) -> str | None:
            return None

        def response_problem(self, outputs: dict[str, np.ndarray]) -> str | None:
            return None

    with pytest.raises(TaskContractError, match="golden_problems, golden_requests"):
        register(NoGolden)
    assert "incomplete" not in TASKS


def test_a_task_without_public_tensors_is_refused() -> None:
    class NoTensors(TaskContract):
        name = "tensorless"

    with pytest.raises(TaskContractError) as refused:
        register(NoTensors)
    for member in CONTRACT[1:]:
        assert member in str(refused.value)
    assert "tensorless" not in TASKS


def test_a_task_whose_build_half_is_not_one_is_refused() -> None:
    class NotABuild(type(TASKS["embedding"])):  # type: ignore[misc]
        name = "unbuilt"
        build = "ensemble"  # type: ignore[assignment]

    with pytest.raises(TaskContractError, match="build"):
        register(NotABuild)
    assert "unbuilt" not in TASKS


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_build_half_plans_the_models_its_configs_wire(tmp_path: Any, name: str) -> None:
    spec = BuildSpec(name="m", task=Task(name), output=tmp_path)
    planned = TASKS[name].build.planned_models(spec)
    if name == "generation":
        assert planned == ["m.v1"]
        return
    ensemble = ensemble_config(spec, "out", 3)
    steps = [step.model_name for step in ensemble.ensemble_scheduling.step]
    assert planned == [ensemble.name, *steps] == ["m.v1", *steps]


ENCODER_TASKS = sorted(set(Task) - {Task.GENERATION})


@pytest.mark.parametrize("task", ENCODER_TASKS)
def test_configs_declare_the_contracts_outputs(tmp_path: Any, task: Task) -> None:
    spec = BuildSpec(name="m", task=task, output=tmp_path)
    declared = [t.name for t in public_outputs(spec, 7)]
    assert declared == [t.name for t in TASKS[task.value].outputs]
    ensemble = ensemble_config(spec, "out", 7, ["A", "B"])
    assert [t.name for t in ensemble.input] == [t.name for t in TASKS[task.value].inputs]


@pytest.mark.parametrize("name", [task.value for task in ENCODER_TASKS])
def test_each_task_makes_its_requests_of_its_own_inputs(name: str) -> None:
    """(A generator's requests carry numbers too: the client's `generate` makes them.)"""
    texts = ["What is served here?", "Triton serves models.", "Bananas are yellow."]
    request = TASKS[name].request(texts)
    required = [t.name for t in TASKS[name].inputs if not t.optional]
    assert list(request) == required
    rows = {len(values) for values in request.values()}
    assert len(rows) == 1 and all(isinstance(v, str) for vs in request.values() for v in vs)


def test_generation_request_is_one_schema() -> None:
    assert [t.name for t, _ in GENERATION_INPUTS] == list(REQUEST_FIELDS)
    assert [t.name for t in TASKS["generation"].inputs] == list(REQUEST_FIELDS)
    assert usable_window(128) == 127


def test_one_tolerance_table_feeds_the_gate() -> None:
    for precision in Precision:
        assert GATE_TOLERANCES[precision].min_cosine == TOLERANCES[precision].gate_min_cosine
        assert (
            GATE_TOLERANCES[precision].max_probability_diff
            == TOLERANCES[precision].max_probability_diff
        )
        # The gate's reference is the fp32 graph itself: never looser than the golden check.
        assert TOLERANCES[precision].gate_min_cosine >= TOLERANCES[precision].min_cosine


def test_response_check_asks_the_served_task() -> None:
    metadata = {
        "outputs": [
            {"name": "EMBEDDING", "shape": [-1, 2]},
            {"name": "TRUNCATED", "shape": [-1, 1]},
        ]
    }
    good = {"EMBEDDING": np.array([[0.6, 0.8]]), "TRUNCATED": np.array([[False]])}
    assert response_problem(good, 1, metadata) is None
    unnormalised = {**good, "EMBEDDING": np.array([[3.0, 4.0]])}
    assert "not L2-normalised" in str(response_problem(unnormalised, 1, metadata))
    assert "missing" in str(response_problem({"EMBEDDING": good["EMBEDDING"]}, 1, metadata))


def test_client_and_load_test_users_import_no_server_or_build_layer() -> None:
    code = (
        "import sys, tritonize.client, tritonize.loadtest.users; "
        "print(' '.join(m for m in sys.modules if m.startswith('tritonize.')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "tritonize.client" in loaded
    layers = ("tritonize.server", "tritonize.repository", "tritonize.export", "tritonize.engine")
    assert [m for m in loaded if m.startswith(layers)] == []
