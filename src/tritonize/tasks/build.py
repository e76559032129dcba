"""The build half of a task: which models a build writes and how they are wired, its export
head, its accuracy gate. Its heavy imports (torch, exporters, the writer) happen on use, so a
task's contract stays importable where only a client runs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tritonize.triton_models import common as names

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    from tritonize.engine.accuracy import Tolerance
    from tritonize.export import ExportedModel
    from tritonize.export.tasks import TaskDefinition
    from tritonize.spec import BuildSpec

# One step of an ensemble: (model, its input map, its output map).
Step = tuple[str, dict[str, str], dict[str, str]]


class TaskBuild(ABC):
    """How a build of the task writes its models into a staging repository."""

    # Whether Triton's own backend (TensorRT, ONNX Runtime) serves the engine, rather than a
    # Python-backend model that runs it itself.
    engine_served_by_backend: ClassVar[bool] = True

    @abstractmethod
    def planned_models(self, spec: BuildSpec) -> list[str]:
        """The model directories a build of `spec` writes, the one clients call first."""

    @abstractmethod
    def stage(self, spec: BuildSpec, workdir: Path, repository: Path) -> tuple[list[str], Any]:
        """Export, validate and write every model into `repository`: (models, max abs diffs)."""


class EncoderBuild(TaskBuild):
    """An ensemble: TEXT -> tokenizer -> engine [-> the task's postprocess steps]."""

    engine_output: ClassVar[str]  # what the engine step's output is called inside the ensemble
    gate_figure: ClassVar[str]  # what `gate_compare` measures, as the build log names it
    needs_trained_head: ClassVar[bool] = False  # refuse weights transformers made up

    @abstractmethod
    def export_head(self) -> TaskDefinition:
        """The checkpoint's loader and the exported graph's head and output."""

    @abstractmethod
    def labels(self, config: Any) -> list[str]:
        """The output's labels from the transformers config (none for most tasks)."""

    @abstractmethod
    def postprocess_models(
        self, spec: BuildSpec, exported: ExportedModel
    ) -> list[tuple[ModelConfig, str]]:
        """Python-backend models after the engine: (config, its `triton_models` module)."""

    @abstractmethod
    def postprocess_steps(self, spec: BuildSpec) -> list[Step]:
        """The ensemble steps after the engine."""

    @abstractmethod
    def gate_compare(
        self, tolerance: Tolerance, case: str, reference: np.ndarray, actual: np.ndarray
    ) -> tuple[list[str], float]:
        """(every miss, the figure compared) of an engine's output against the fp32 graph's."""

    @abstractmethod
    def golden_reference(self, exported: ExportedModel) -> dict[str, Any]:
        """PyTorch's outputs for the golden texts, as `golden_problems` reads them."""

    def planned_models(self, spec: BuildSpec) -> list[str]:
        from tritonize.repository.configs import StepNames

        steps = StepNames(spec.name)
        extra = [model for model, _, _ in self.postprocess_steps(spec)]
        return [steps.ensemble, steps.tokenizer, steps.engine, *extra]

    def stage(self, spec: BuildSpec, workdir: Path, repository: Path) -> tuple[list[str], Any]:
        from tritonize.engine.build import build_engine
        from tritonize.export import export_onnx
        from tritonize.progress import step
        from tritonize.repository.writer import write_models

        exported = export_onnx(spec, workdir)
        engine = build_engine(spec, exported, workdir)
        with step("Writing the model repository"):
            models = write_models(spec, exported, engine, repository)
        return models, exported.max_abs_diff


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a64 * b64, axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


ENGINE_INPUTS = {n: n for n in (names.INPUT_IDS, names.ATTENTION_MASK)}
