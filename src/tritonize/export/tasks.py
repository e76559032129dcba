"""Per-task model loading, the exported graph's head, and its output declaration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tritonize.errors import ExportError
from tritonize.spec import BuildSpec, Task
from tritonize.tasks import task_named
from tritonize.tasks.build import EncoderBuild
from tritonize.triton_models.common import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS

ONNX_INPUTS = (INPUT_IDS, ATTENTION_MASK)


class MeanPooledEmbedding(nn.Module):
    """Encoder + masked mean pooling + L2 normalisation, exported as one graph.

    Pooling inside the graph saves a model hop and a copy of the hidden states per request.
    Pooling and normalisation run in fp32 whatever the encoder's precision.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden.float()
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


class SequenceLogits(nn.Module):
    """Classifier returning raw fp32 logits; softmax runs in the postprocess step. Also the
    per-token logits of a token classifier ([batch, sequence, labels])."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return _run(self.classifier, input_ids, attention_mask, token_type_ids).logits.float()


class PairScore(nn.Module):
    """A cross-encoder's relevance score, [batch, 1]: its one logit through the activation that
    sentence-transformers applies (the checkpoint's own, else a sigmoid)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.logits = SequenceLogits(classifier)
        self.activation = cross_encoder_activation(classifier.config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.activation(self.logits(input_ids, attention_mask, token_type_ids))


class SpanLogits(nn.Module):
    """Extractive question answering: start and end logits per token, [batch, sequence, 2]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = _run(self.model, input_ids, attention_mask, token_type_ids)
        return torch.stack((out.start_logits, out.end_logits), dim=-1).float()


def _run(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
) -> Any:
    """A transformers model's output; token types passed only where the graph takes them."""
    extra = {} if token_type_ids is None else {TOKEN_TYPE_IDS: token_type_ids}
    return model(input_ids=input_ids, attention_mask=attention_mask, **extra)


def cross_encoder_activation(config: Any) -> nn.Module:
    """The activation sentence-transformers' CrossEncoder puts on a one-logit model: the one its
    config names (a `torch.` class), else a sigmoid."""
    if int(config.num_labels) != 1:
        raise ExportError(
            f"task `rerank` needs a cross-encoder with one output (a relevance score); this "
            f"checkpoint has num_labels = {config.num_labels}: build it as `classification`"
        )
    settings = getattr(config, "sentence_transformers", None) or {}
    path = settings.get("activation_fn") or getattr(
        config, "sbert_ce_default_activation_function", None
    )
    if not path:
        return nn.Sigmoid()
    module, _, name = str(path).rpartition(".")
    if not module.startswith("torch."):
        raise ExportError(
            f"the cross-encoder's activation `{path}` is not a torch class: tritonize exports "
            "torch activations only"
        )
    import importlib

    return getattr(importlib.import_module(module), name)()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class TaskDefinition:
    """How to load a checkpoint for a task and what the exported graph returns."""

    task: Task
    output_name: str  # the ONNX / engine output tensor
    auto_class: str  # transformers Auto* class that loads the checkpoint
    head: Callable[[nn.Module], nn.Module]
    output_dims: Callable[[Any], tuple[int, ...]]  # from the transformers config
    pairs: bool = False  # the task takes text pairs

    def output_dim(self, config: Any) -> int:
        """The output's width (its last dim)."""
        return self.output_dims(config)[-1]

    def graph_inputs(self, config: Any) -> tuple[str, ...]:
        """input_ids, attention_mask, and token_type_ids for pairs where the checkpoint tells
        the two texts apart by them (BERT does; RoBERTa, with one type, does not)."""
        if self.pairs and int(getattr(config, "type_vocab_size", 0) or 0) > 1:
            return (*ONNX_INPUTS, TOKEN_TYPE_IDS)
        return ONNX_INPUTS

    def load(self, model_dir: Path, trust_remote_code: bool, **kwargs: Any) -> nn.Module:
        return self.load_with_untrained(model_dir, trust_remote_code, **kwargs)[0]

    def load_with_untrained(
        self, model_dir: Path, trust_remote_code: bool, **kwargs: Any
    ) -> tuple[nn.Module, list[str]]:
        """The model, and the weights transformers initialised at random (absent from the
        checkpoint, or of another shape there)."""
        import transformers

        loader = getattr(transformers, self.auto_class)
        model, info = loader.from_pretrained(
            model_dir,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **kwargs,
        )
        untrained = [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())]
        names = sorted(str(key[0] if isinstance(key, tuple) else key) for key in untrained)
        return self.head(model).eval(), names


def encoder_build(spec: BuildSpec) -> EncoderBuild:
    """The build half of an encoder task (its export head, labels, gate)."""
    build = task_named(spec.task.value).build
    if not isinstance(build, EncoderBuild):
        raise ExportError(f"task `{spec.task.value}` is not exported as an encoder")
    return build


# The torch modules a task's export head may name.
HEADS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "MeanPooledEmbedding": MeanPooledEmbedding,
    "SequenceLogits": SequenceLogits,
    "PairScore": PairScore,
    "SpanLogits": SpanLogits,
}


def task_definition(task: Task) -> TaskDefinition:
    """What the task's build half says to load and export, with its torch head."""
    build = task_named(task.value).build
    if not isinstance(build, EncoderBuild):
        raise ExportError(f"task `{task.value}` is not exported as an encoder")
    head = build.export_head
    return TaskDefinition(
        task=task,
        output_name=head.output_name,
        auto_class=head.auto_class,
        head=HEADS[head.head],
        output_dims=head.output_dims,
        pairs=build.pairs,
    )


class _ExportHeads(dict[Task, TaskDefinition]):
    """Each encoder task's export definition, made when first looked up."""

    def __missing__(self, task: Task) -> TaskDefinition:
        try:
            self[task] = task_definition(task)
        except ExportError:
            raise KeyError(task) from None
        return self[task]


TASKS: dict[Task, TaskDefinition] = _ExportHeads()


def check_trained_head(model_dir: Path, untrained: list[str], allowed: bool, task: str) -> None:
    """Refuse a checkpoint whose head transformers had to invent: it would answer by chance
    (labels LABEL_0, LABEL_1, ..., random spans or scores) and look healthy."""
    if not untrained or allowed:
        return
    shown = ", ".join(untrained[:6]) + (", ..." if len(untrained) > 6 else "")
    raise ExportError(
        f"`model` {model_dir} has no trained {task} head: transformers initialised "
        f"{len(untrained)} weight(s) at random ({shown}), so its answers would be chance. "
        f"Fine-tune it for {task} first, or build it anyway with "
        "--allow-untrained-head (allow_untrained_head = true)"
    )
