"""What every task provides: its contract (runs anywhere: client, load tests, verify) and the
registry that refuses a task lacking any part of it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, final

import numpy as np

from tritonize.errors import TritonizeError
from tritonize.tasks.build import TaskBuild
from tritonize.tasks.tensors import PublicTensor
from tritonize.triton_models.common import TEXT, TRUNCATED

if TYPE_CHECKING:  # the contract calls a client it is handed; it imports none
    from tritonize.client import TritonizeClient


class TaskContractError(TritonizeError):
    """A task class does not implement its whole contract."""


# The encoder tasks' texts in, and whether the tokenizer cut each one to the window.
TEXT_INPUT = PublicTensor(TEXT, "BYTES", np.object_)
TRUNCATED_OUTPUT = PublicTensor(TRUNCATED, "BOOL", np.bool_)


class TaskContract(ABC):
    """One task as clients, load tests and `verify` see it; subclasses register with
    `register`, which refuses one that lacks a member."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[PublicTensor, ...]]
    outputs: ClassVar[tuple[PublicTensor, ...]]
    build: ClassVar[TaskBuild]  # the build half

    def call(
        self, client: TritonizeClient, model: str, text: str, metadata: dict[str, Any]
    ) -> str | None:
        """One request for `text`, the task's own way (its `request` of one text): what is
        wrong with its response, if anything. A failed request raises `TritonizeError`."""
        return infer_and_check(self, client, model, [text], metadata)

    @abstractmethod
    def request(self, texts: list[str]) -> dict[str, list[str]]:
        """A request of this task made of plain texts (load tests, health probes): each input's
        values by name, one per row."""

    @abstractmethod
    def response_problem(self, outputs: dict[str, np.ndarray]) -> str | None:
        """What the task itself finds wrong in a response whose shapes are right."""

    @abstractmethod
    def golden_problems(
        self, client: TritonizeClient, model: str, golden: dict[str, Any]
    ) -> tuple[bool, str]:
        """(passed, detail): the served model against the golden file's reference outputs."""

    @abstractmethod
    def golden_requests(self, golden: dict[str, Any]) -> int:
        """How many requests `golden_problems` sends."""

    @final
    def judge_record(
        self, client: TritonizeClient, model: str, record: dict[str, Any]
    ) -> RecordJudgement:
        """One record of `golden_records` judged by `golden_problems` itself, so that a record
        is judged as `verify` judges the set: every task's check holds for each record (a
        worst cosine, a largest difference, each answer matching), so the whole set passes
        exactly when each of its records does. A request that raised is a failure, not a
        disagreement."""
        watched = _FailureWatch(client)
        passed, detail = self.golden_problems(watched, model, record)  # type: ignore[arg-type]
        if watched.error is not None:
            return RecordJudgement(Outcome.FAILED, str(watched.error))
        return RecordJudgement(Outcome.AGREE if passed else Outcome.DISAGREE, detail)

    def serves(self, metadata: dict[str, Any]) -> bool:
        """Whether a model with this metadata serves this task (its public outputs match)."""
        served = {tensor["name"] for tensor in metadata["outputs"]}
        return served == {tensor.name for tensor in self.outputs}


class Outcome(StrEnum):
    AGREE = "agree"
    DISAGREE = "disagree"
    FAILED = "failed"  # the request failed: nothing to judge


@dataclass(frozen=True)
class RecordJudgement:
    outcome: Outcome
    detail: str


def golden_records(golden: dict[str, Any]) -> list[dict[str, Any]]:
    """The golden file as one-record golden files: its lists (texts and their references,
    one item per record) cut to one item each, everything else kept."""
    lists = {key: value for key, value in golden.items() if isinstance(value, list)}
    lengths = {key: len(value) for key, value in lists.items()}
    if not lengths or len(set(lengths.values())) != 1:
        raise TritonizeError(
            f"golden file of `{golden.get('model')}` has records of unequal counts {lengths}: "
            "expected lists of one item per record, as `tritonize build` writes them"
        )
    count = next(iter(lengths.values()))
    return [
        {**golden, **{key: value[index : index + 1] for key, value in lists.items()}}
        for index in range(count)
    ]


class _FailureWatch:
    """A client that notes the `TritonizeError` any call raises (streams included) before it
    reaches `golden_problems`, which reports such an error as a failed check."""

    def __init__(self, client: TritonizeClient) -> None:
        self._client = client
        self.error: TritonizeError | None = None

    def __getattr__(self, name: str) -> Any:
        member = getattr(self._client, name)
        return self._watched(member) if callable(member) else member

    def _watched(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def watched(*args: Any, **kwargs: Any) -> Any:
            try:
                result = call(*args, **kwargs)
            except TritonizeError as exc:
                self.error = exc
                raise
            return self._stream(result) if isinstance(result, Iterator) else result

        return watched

    def _stream(self, items: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from items
        except TritonizeError as exc:
            self.error = exc
            raise


CONTRACT = ("name", "inputs", "outputs", "build", *sorted(TaskContract.__abstractmethods__))
TASKS: dict[str, TaskContract] = {}


def missing_members(cls: type) -> list[str]:
    """The members of the contract `cls` leaves undefined or abstract."""
    return [
        member
        for member in CONTRACT
        if not hasattr(cls, member) or getattr(getattr(cls, member), "__isabstractmethod__", False)
    ]


ContractClass = TypeVar("ContractClass", bound=type[TaskContract])


def register(cls: ContractClass) -> ContractClass:
    """Add a task to `TASKS`; a class lacking any part of the contract is refused."""
    missing = missing_members(cls)
    if "build" not in missing and not isinstance(cls.build, TaskBuild):
        missing.append("build (a TaskBuild)")
    if missing:
        raise TaskContractError(
            f"task class `{cls.__name__}` lacks {', '.join(missing)}: "
            f"every task implements {', '.join(CONTRACT)}"
        )
    TASKS[cls.name] = cls()
    return cls


def task_named(name: str) -> TaskContract:
    if name not in TASKS:
        raise TaskContractError(f"task `{name}` is unknown: known are {', '.join(TASKS)}")
    return TASKS[name]


def served_task(metadata: dict[str, Any]) -> TaskContract | None:
    """The task whose public outputs a model's metadata lists, if any."""
    return next((task for task in TASKS.values() if task.serves(metadata)), None)


def batched(metadata: dict[str, Any]) -> bool:
    """Whether a model takes a batch of inputs (its inputs' shapes lead with -1) rather than
    one input per request."""
    inputs = metadata.get("inputs")
    if not inputs:  # outputs alone: taken as batched, as every task but one is
        return True
    shape = inputs[0]["shape"]
    return len(shape) > 1 and int(shape[0]) == -1


def response_problem(
    outputs: dict[str, np.ndarray], rows: int, metadata: dict[str, Any]
) -> str | None:
    """What is wrong with `outputs` for a request of `rows` texts, or None if nothing is:
    every declared output present with its shape, finite, no empty string, then the task's own
    check (the task whose outputs the metadata lists)."""
    declared = {o["name"]: [int(d) for d in o["shape"]] for o in metadata["outputs"]}
    for name, dims in declared.items():
        expected = [rows, *dims[1:]] if batched(metadata) else dims
        problem = _tensor_problem(name, outputs.get(name), expected)
        if problem:
            return problem
    task = served_task(metadata)
    return task.response_problem(outputs) if task else None


def infer_and_check(
    task: TaskContract, client: TritonizeClient, model: str, texts: list[str],
    metadata: dict[str, Any],
) -> str | None:  # fmt: skip
    """Send `task`'s request made of `texts`; what is wrong with the response, if anything."""
    inputs = task.request(texts)
    rows = len(next(iter(inputs.values())))
    return response_problem(client.infer_inputs(model, inputs), rows, metadata)


def _tensor_problem(name: str, value: np.ndarray | None, expected: list[int]) -> str | None:
    """`expected` has the batch first; -1 matches any size."""
    if value is None:
        return f"output `{name}` is missing"
    if len(value.shape) != len(expected) or any(
        want not in (-1, got) for want, got in zip(expected, value.shape, strict=True)
    ):
        return f"output `{name}` has shape {list(value.shape)}, expected {expected}"
    if value.dtype.kind in "OSU":  # BYTES
        if any(not item for item in value.reshape(-1)):
            return f"output `{name}` has an empty string"
    elif not np.isfinite(value).all():
        return f"output `{name}` has non-finite values"
    return None
