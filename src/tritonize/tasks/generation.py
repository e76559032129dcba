"""`generation` (decoder-only): a prompt in TensorRT-LLM's request tensors, text out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tritonize.errors import TritonizeError
from tritonize.tasks.base import PublicTensor, TaskContract, register
from tritonize.tasks.build import Layout, StepNames, TaskBuild
from tritonize.triton_models.generation import REQUEST_SCHEMA

if TYPE_CHECKING:
    from tritonize.client import TritonizeClient
    from tritonize.spec import BuildSpec

SMOKE_NEW_TOKENS = 8  # per request that only checks the model answers


class GenerationBuild(TaskBuild):
    """One decoupled Python model: tokenizer, decoding loop and decoder together."""

    layout = Layout.GENERATOR
    engine_served_by_backend = False  # the generator runs its decoder plan itself

    def planned_models(self, spec: BuildSpec) -> list[str]:
        return [StepNames(spec.name, spec.version).entry]


@register
class Generation(TaskContract):
    name = "generation"
    inputs = tuple(
        PublicTensor(f.name, f.datatype, f.dtype, f.dims, f.optional, f.default)
        for f in REQUEST_SCHEMA
    )
    outputs = (
        PublicTensor("text_output", "BYTES", np.object_, (-1,)),
        PublicTensor("num_input_tokens", "INT32", np.int32),
        PublicTensor("num_output_tokens", "INT32", np.int32),
    )
    build = GenerationBuild()

    def call(
        self, client: TritonizeClient, model: str, text: str, metadata: dict[str, Any]
    ) -> str | None:
        for _delta in client.generate(model, text, SMOKE_NEW_TOKENS):
            pass  # an error anywhere in the stream raises
        return None

    def request(self, texts: list[str]) -> dict[str, list[str]]:
        return {"text_input": texts[:1]}  # one prompt per request

    def response_problem(self, outputs: dict[str, np.ndarray]) -> str | None:
        return None  # streams are checked for text as they arrive (loadtest users)

    def golden_problems(
        self, client: TritonizeClient, model: str, golden: dict[str, Any]
    ) -> tuple[bool, str]:
        """Greedy decoding reproduces PyTorch's continuations: identically, or (fp16/bf16)
        sharing at least `min_common_prefix` of each one's text."""
        least = golden["tolerance"]["min_common_prefix"]
        misses = []
        for record in golden["continuations"]:
            try:
                text = "".join(client.generate(model, record["prompt"], record["max_tokens"]))
            except TritonizeError as exc:
                return False, str(exc)
            shared = _shared_start(text, record["text"])
            if shared < least * max(len(text), len(record["text"])):
                misses.append(f"{record['prompt']!r}: served {text!r}, PyTorch {record['text']!r}")
        agree = "identical to" if least == 1 else f"sharing >= {least:.0%} of their text with"
        detail = f"{len(golden['continuations']) - len(misses)}/{len(golden['continuations'])} "
        detail += f"greedy continuations {agree} PyTorch"
        return not misses, detail + (f"; first: {misses[0]}" if misses else "")

    def golden_requests(self, golden: dict[str, Any]) -> int:
        return len(golden["continuations"])  # one per prompt


def _shared_start(a: str, b: str) -> int:
    """How many leading characters `a` and `b` have in common."""
    pairs = zip(a, b, strict=False)  # up to the shorter one
    return next((i for i, (x, y) in enumerate(pairs) if x != y), min(len(a), len(b)))
