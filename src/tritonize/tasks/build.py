"""The build half of a task: which models a build writes and how they are wired, its export
head, its accuracy gate. It describes; the exporter, the engine builder and the writer act on
the description, so tasks import nothing from them and a task's contract stays importable
where only a client runs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tritonize.tasks.tensors import PublicTensor
from tritonize.tasks.tolerances import GateTolerance
from tritonize.triton_models.common import (
    ATTENTION_MASK,
    BUILD_MARK,
    INPUT_IDS,
    OFFSETS,
    SPECIAL_TOKENS_MASK,
    TOKEN_TYPE_IDS,
    TRUNCATED,
    build_of,
)
from tritonize.triton_models.features import Feature

if TYPE_CHECKING:
    from tritonize.spec import BuildSpec


# BUILD_MARK: `NAME.vN` is build N of NAME. (Names end otherwise: the spec refuses one ending
# so. A mark that clients' URL quoting keeps as it is: tritonclient's HTTP client sends `@` as
# `%40`, which Triton does not decode.)


@dataclass(frozen=True)
class StepNames:
    """Names of one build's models. Build N of NAME lives under names of its own: its entry
    `NAME.vN` (the ensemble, or the generator) and steps `NAME_tokenizer.vN`, ..., each holding
    version N only, so that no two builds ever share a model (nor its config). NAME itself is
    the public model: it points at the serving build (`repository/builds.py`). Without a
    version: the names of a repository written before builds had names of their own."""

    name: str
    version: int | None = None

    @classmethod
    def of_entry(cls, model: str) -> StepNames:
        """The names of the build whose entry is `model` (`NAME.vN`, or a plain NAME)."""
        name, version = build_of(model)
        return cls(name, int(version) if version else None)

    def _named(self, role: str) -> str:
        base = f"{self.name}_{role}" if role else self.name
        return base if self.version is None else f"{base}{BUILD_MARK}{self.version}"

    @property
    def entry(self) -> str:
        return self._named("")

    @property
    def tokenizer(self) -> str:
        return self._named("tokenizer")

    @property
    def engine(self) -> str:
        return self._named("engine")

    @property
    def postprocess(self) -> str:
        return self._named("postprocess")

    @property
    def steps(self) -> tuple[str, str, str]:
        return self.tokenizer, self.engine, self.postprocess


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
    width_field: str = ""  # the transformers config field that gives the output's width
    width: int = 0  # or a fixed width
    per_token: bool = False  # one row per token ([batch, sequence, width]), not per text

    def output_dims(self, config: Any) -> tuple[int, ...]:
        """The output's dims without the batch dimension (-1: the sequence)."""
        width = self.width or int(getattr(config, self.width_field))
        return (-1, width) if self.per_token else (width,)


class TaskBuild(ABC):
    """What a build of the task writes."""

    layout: ClassVar[Layout]
    # Whether Triton's own backend (TensorRT, ONNX Runtime) serves the engine, rather than a
    # Python-backend model that runs it itself.
    engine_served_by_backend: ClassVar[bool] = True

    @abstractmethod
    def planned_models(self, spec: BuildSpec) -> list[str]:
        """The model directories a build of `spec` writes, the one clients call first."""


@dataclass(frozen=True)
class Postprocess:
    """The Python step after the engine: its `triton_models` module, its tensors (ensemble
    tensors by name: the engine's output, the tokenizer's, the public inputs) and parameters."""

    module: str
    inputs: tuple[PublicTensor, ...]
    outputs: tuple[PublicTensor, ...]
    parameters: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictionProfile:
    """A task's prediction features over the reference texts (see triton_models/features.py)."""

    features: tuple[Feature, ...] = ()
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    centroid: tuple[float, ...] = ()  # embeddings: the reference texts' mean direction


@dataclass(frozen=True)
class Reference:
    """The checkpoint in PyTorch, as a build sees it: what golden records are computed from."""

    run: Callable[[dict[str, np.ndarray]], np.ndarray]  # graph feeds -> the head's output
    tokenizer: Any  # tokenizers.Tokenizer, padding and truncation cleared
    pad_id: int
    labels: list[str]
    graph_inputs: tuple[str, ...]  # input_ids, attention_mask [, token_type_ids]

    def run_graph(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        """The head's output for the graph's inputs among `tensors` (which may hold more)."""
        return self.run({name: tensors[name] for name in self.graph_inputs})

    def own_tokenizer(self) -> Any:
        """A copy of the tokenizer to set truncation on (the build saves the original)."""
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.tokenizer.to_str())


class EncoderBuild(TaskBuild):
    """An ensemble: the texts -> tokenizer -> engine [-> the task's postprocess step]."""

    layout = Layout.ENSEMBLE
    export_head: ClassVar[ExportHead]
    engine_output: ClassVar[str]  # what the engine step's output is called inside the ensemble
    gate_figure: ClassVar[str]  # what `gate_compare` measures, as the build log names it
    needs_trained_head: ClassVar[bool] = False  # refuse weights transformers made up
    # Text pairs: the graph takes token_type_ids where the checkpoint has more than one type.
    pairs: ClassVar[bool] = False
    # The tokenizer step: its `triton_models` module, and what it adds to ids and mask.
    tokenizer_module: ClassVar[str] = "tokenizer"
    tokenizer_extras: ClassVar[tuple[str, ...]] = ()  # e.g. offsets, special_tokens_mask
    # Whether requests carry a batch of inputs. When not, one request is one input whose
    # tokenizer may make several rows (windows): the engine still batches those.
    batching: ClassVar[bool] = True

    def tokenizer_outputs(self, graph_inputs: tuple[str, ...]) -> list[PublicTensor]:
        """What the tokenizer step returns: ids and mask, TRUNCATED, token types where the
        graph takes them, then the task's extras."""
        rows = [
            PublicTensor(name, "INT64", np.int64, (-1,)) for name in (INPUT_IDS, ATTENTION_MASK)
        ]
        rows.append(PublicTensor(TRUNCATED, "BOOL", np.bool_))
        if TOKEN_TYPE_IDS in graph_inputs:
            rows.append(PublicTensor(TOKEN_TYPE_IDS, "INT64", np.int64, (-1,)))
        return rows + [_EXTRAS[name] for name in self.tokenizer_extras]

    def tokenizer_parameters(self, spec: BuildSpec) -> dict[str, object]:
        """The tokenizer step's parameters besides the window and the padding id."""
        return {}

    def labels(self, config: Any) -> list[str]:
        """The output's labels from the transformers config (none for most tasks)."""
        return []

    # Whether the head's outputs on the reference texts make prediction features.
    profiles_predictions: ClassVar[bool] = False

    @property
    def profiled(self) -> bool:
        """Whether a build profiles reference texts: tasks on single texts through the shared
        tokenizer step (pairs and question windows have no reference texts of that form)."""
        return not self.pairs and self.tokenizer_module == "tokenizer"

    def prediction_profile(self, outputs: np.ndarray, labels: list[str]) -> PredictionProfile:
        """The prediction features of the head's `outputs` on the reference texts."""
        return PredictionProfile()

    def postprocess(self, labels: list[str], spec: BuildSpec) -> Postprocess | None:
        """The Python step after the engine, if any (none: the engine's output is public)."""
        return None

    @abstractmethod
    def gate_compare(
        self, tolerance: GateTolerance, case: str, reference: np.ndarray, actual: np.ndarray
    ) -> tuple[list[str], float]:
        """(every miss, the figure compared) of an engine's output against the fp32 graph's."""

    @abstractmethod
    def golden_reference(self, reference: Reference, spec: BuildSpec) -> dict[str, Any]:
        """The golden inputs and PyTorch's outputs for them, as `golden_problems` reads them."""

    def planned_models(self, spec: BuildSpec) -> list[str]:
        steps = StepNames(spec.name, spec.version)
        extra = [steps.postprocess] if self.postprocess([], spec) else []
        return [steps.entry, steps.tokenizer, steps.engine, *extra]


# The tokenizer step's optional outputs, by name.
_EXTRAS = {
    OFFSETS: PublicTensor(OFFSETS, "INT64", np.int64, (-1, 2)),
    SPECIAL_TOKENS_MASK: PublicTensor(SPECIAL_TOKENS_MASK, "INT64", np.int64, (-1,)),
}


def config_labels(config: Any) -> list[str]:
    """A classifier's labels by index, from the transformers config's `id2label`."""
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(int(config.num_labels))]


def encode_for_graph(
    reference: Reference, spec: BuildSpec, texts: list[str] | list[tuple[str, str]]
) -> dict[str, np.ndarray]:
    """The graph's feeds for `texts` (or pairs), tokenized as the tokenizer step does."""
    from tritonize.triton_models.tokenizer import TextTokenizer

    step = TextTokenizer(reference.own_tokenizer(), spec.max_seq_len, reference.pad_id)
    (batch,) = step.encode([texts])
    return batch.tensors((*reference.graph_inputs, OFFSETS, SPECIAL_TOKENS_MASK))


def golden_text_outputs(reference: Reference, spec: BuildSpec) -> tuple[list[str], np.ndarray]:
    """The golden texts and PyTorch's outputs for them (a text task's golden record)."""
    from tritonize.export.validation import GOLDEN_TEXTS

    texts = list(GOLDEN_TEXTS)
    return texts, reference.run_graph(encode_for_graph(reference, spec, texts))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a64 * b64, axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
