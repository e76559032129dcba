"""The build half of a task: which models a build writes and how they are wired, its export
head, its accuracy gate. It describes; the exporter, the engine builder and the writer act on
the description, so tasks import nothing from them and a task's contract stays importable
where only a client runs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tritonize.tasks.tolerances import GateTolerance

if TYPE_CHECKING:
    from tritonize.spec import BuildSpec

# One step of an ensemble: (model, its input map, its output map).
Step = tuple[str, dict[str, str], dict[str, str]]


@dataclass(frozen=True)
class StepNames:
    """Names of an ensemble and its step models: the ensemble's name prefixes the steps."""

    ensemble: str

    @property
    def tokenizer(self) -> str:
        return f"{self.ensemble}_tokenizer"

    @property
    def engine(self) -> str:
        return f"{self.ensemble}_engine"

    @property
    def postprocess(self) -> str:
        return f"{self.ensemble}_postprocess"


class Layout(StrEnum):
    """How a task's models are laid out in a repository (the writer has one recipe each)."""

    ENSEMBLE = "ensemble"  # TEXT -> tokenizer -> engine [-> postprocess]
    GENERATOR = "generator"  # one decoupled Python model with its tokenizer and decoder


@dataclass(frozen=True)
class ExportHead:
    """How to load a checkpoint and what the exported graph returns."""

    output_name: str  # the ONNX / engine output tensor
    auto_class: str  # transformers Auto* class that loads the checkpoint
    head: str  # the torch module around it, by its name in export/tasks.py's HEADS
    width_field: str  # the transformers config field that gives the output's width


class TaskBuild(ABC):
    """What a build of the task writes."""

    layout: ClassVar[Layout]
    # Whether Triton's own backend (TensorRT, ONNX Runtime) serves the engine, rather than a
    # Python-backend model that runs it itself.
    engine_served_by_backend: ClassVar[bool] = True

    @abstractmethod
    def planned_models(self, spec: BuildSpec) -> list[str]:
        """The model directories a build of `spec` writes, the one clients call first."""


class EncoderBuild(TaskBuild):
    """An ensemble: TEXT -> tokenizer -> engine [-> the task's postprocess step]."""

    layout = Layout.ENSEMBLE
    export_head: ClassVar[ExportHead]
    engine_output: ClassVar[str]  # what the engine step's output is called inside the ensemble
    gate_figure: ClassVar[str]  # what `gate_compare` measures, as the build log names it
    needs_trained_head: ClassVar[bool] = False  # refuse weights transformers made up
    postprocess_module: ClassVar[str | None] = None  # the `triton_models` module after the engine

    @abstractmethod
    def labels(self, config: Any) -> list[str]:
        """The output's labels from the transformers config (none for most tasks)."""

    @abstractmethod
    def postprocess_steps(self, spec: BuildSpec) -> list[Step]:
        """The ensemble steps after the engine."""

    @abstractmethod
    def gate_compare(
        self, tolerance: GateTolerance, case: str, reference: np.ndarray, actual: np.ndarray
    ) -> tuple[list[str], float]:
        """(every miss, the figure compared) of an engine's output against the fp32 graph's."""

    @abstractmethod
    def golden_reference(self, outputs: np.ndarray, labels: list[str]) -> dict[str, Any]:
        """PyTorch's outputs for the golden texts, as `golden_problems` reads them."""

    def planned_models(self, spec: BuildSpec) -> list[str]:
        steps = StepNames(spec.name)
        extra = [model for model, _, _ in self.postprocess_steps(spec)]
        return [steps.ensemble, steps.tokenizer, steps.engine, *extra]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a64 * b64, axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
