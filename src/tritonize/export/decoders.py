"""Decoder-only LLMs with their KV cache as explicit ONNX inputs and outputs.

The graph takes `input_ids`, `attention_mask` (past + new positions), `position_ids` and
`past_key_values.<layer>.key|value`, and returns the last position's `logits` and
`present.<layer>.key|value`. One graph serves both prefill (past length 0) and decode steps:
no merged decoder with an `If` node, which TensorRT cannot build.

Adding a family is one entry in DECODERS: how it names its layer, head and size fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from tritonize.errors import ExportError, SpecError, ValidationError
from tritonize.progress import note, step
from tritonize.triton_models.decoding import past_names, present_names

if TYPE_CHECKING:
    from tritonize.triton_models.features import Profile

INPUTS = ("input_ids", "attention_mask", "position_ids")
ATOL = 1e-4
# Prompts whose greedy continuations by PyTorch go into golden.json for `tritonize verify`.
GOLDEN_PROMPTS = ("The capital of France is", "Once upon a time", "def fibonacci(n):")
GOLDEN_NEW_TOKENS = 16


@dataclass(frozen=True)
class DecoderArchitecture:
    """Where a transformers config keeps the sizes of the KV cache."""

    model_type: str
    layers: str = "num_hidden_layers"
    heads: str = "num_attention_heads"
    kv_heads: str | None = "num_key_value_heads"  # grouped-query attention; None: = heads
    hidden: str = "hidden_size"
    positions: str = "max_position_embeddings"

    def cache_shape(self, config: Any) -> tuple[int, int, int]:
        """(layers, kv heads, head dim)."""
        heads = int(getattr(config, self.heads))
        kv_heads = int(getattr(config, self.kv_heads, None) or heads) if self.kv_heads else heads
        head_dim = int(getattr(config, "head_dim", None) or getattr(config, self.hidden) // heads)
        return int(getattr(config, self.layers)), kv_heads, head_dim

    def max_positions(self, config: Any) -> int:
        return int(getattr(config, self.positions))


DECODERS: dict[str, DecoderArchitecture] = {
    arch.model_type: arch
    for arch in (
        DecoderArchitecture(
            "gpt2",
            layers="n_layer",
            heads="n_head",
            kv_heads=None,
            hidden="n_embd",
            positions="n_positions",
        ),
        DecoderArchitecture("llama"),
        DecoderArchitecture("mistral"),
        DecoderArchitecture("qwen2"),
    )
}


def decoder_for(config: Any) -> DecoderArchitecture:
    model_type = str(getattr(config, "model_type", None))
    if model_type not in DECODERS:
        raise ExportError(
            f"model_type `{model_type}` is not supported for generation: "
            f"expected one of {', '.join(sorted(DECODERS))}"
        )
    return DECODERS[model_type]


class DecoderWithCache(nn.Module):
    """A causal LM with a flat KV cache: logits of the last position, then the new cache."""

    def __init__(self, model: nn.Module, layers: int) -> None:
        super().__init__()
        self.model = model
        self.layers = layers

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(self.layers)])
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        cache = getattr(out, "cache", None) or out.past_key_values
        presents = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        return (out.logits[:, -1, :].float(), *presents)


class TorchDecoderRuntime:
    """A `DecoderRuntime` over the PyTorch wrapper: the reference a typed (fp16/bf16) decoder
    is checked with where ONNX Runtime has no kernels for it."""

    def __init__(self, wrapper: DecoderWithCache, config: Any, dtype: torch.dtype) -> None:
        self.wrapper = wrapper
        self.layers, self.kv_heads, self.head_dim = decoder_for(config).cache_shape(config)
        self.vocab = int(config.vocab_size)  # the logits' width
        self.dtype = dtype

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, dtype=self.dtype)

    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[torch.Tensor],
    ) -> tuple[np.ndarray, list[torch.Tensor]]:
        feeds = (torch.from_numpy(a) for a in (input_ids, attention_mask, position_ids))
        with torch.inference_mode():
            logits, *presents = self.wrapper(*feeds, *past)
        return logits.numpy(), presents


def load_decoder(
    model_dir: Path, trust_remote_code: bool, attn_implementation: str = "eager"
) -> tuple[DecoderWithCache, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=trust_remote_code
    )
    layers, _, _ = decoder_for(config).cache_shape(config)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
    )  # fmt: skip
    # eval() on the wrapper itself: the exporter restores its training flag afterwards.
    return DecoderWithCache(model, layers).eval(), config


def export_decoder(
    wrapper: DecoderWithCache, config: Any, path: Path, opset: int,
    cache_dtype: torch.dtype = torch.float32,
) -> None:  # fmt: skip
    """Trace to ONNX with dynamic batch, sequence and past axes; the KV cache in `cache_dtype`."""
    import contextlib
    import io
    import warnings

    layers, kv_heads, head_dim = decoder_for(config).cache_shape(config)
    batch, seq, past_len = 2, 3, 4  # sizes > 1 so that no dynamic axis is specialised
    example = (
        torch.ones((batch, seq), dtype=torch.int64),
        torch.ones((batch, past_len + seq), dtype=torch.int64),
        torch.arange(past_len, past_len + seq).repeat(batch, 1),
        *[
            torch.zeros((batch, kv_heads, past_len, head_dim), dtype=cache_dtype)
            for _ in range(2 * layers)
        ],
    )
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch"},
    }
    axes.update({name: {0: "batch", 2: "past"} for name in past_names(layers)})
    axes.update({name: {0: "batch", 2: "total"} for name in present_names(layers)})
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stderr(chatter), warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, example, str(path),
                input_names=[*INPUTS, *past_names(layers)],
                output_names=["logits", *present_names(layers)],
                dynamic_axes=axes, opset_version=opset, dynamo=False,
            )  # fmt: skip
    except Exception as exc:  # the exporter raises many unrelated types
        raise ExportError(f"decoder export failed: {exc}\n{chatter.getvalue()[-2000:]}") from exc
    wrapper.eval()


def validate_decoder(wrapper: DecoderWithCache, config: Any, path: Path) -> dict[str, float]:
    """ONNX Runtime against PyTorch: prefill steps and decode steps over padded caches."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    layers, kv_heads, head_dim = decoder_for(config).cache_shape(config)
    vocab = int(config.vocab_size)
    generator = torch.Generator().manual_seed(0)
    # (batch, new tokens, past): prefill runs after one masked cache slot, as the generator
    # sends it (decoding.py), and a batch of prompts is left-padded, as are decode batches.
    cases = {"prefill 1x7": (1, 7, 1), "prefill 3x6, left-padded": (3, 6, 1),
             "decode 4x1, past 9": (4, 1, 9), "decode 2x1, past 2": (2, 1, 2)}  # fmt: skip
    misses, diffs = [], {}
    for name, (batch, seq, past_len) in cases.items():
        ids = torch.randint(0, vocab, (batch, seq), generator=generator)
        mask = torch.ones((batch, past_len + seq), dtype=torch.int64)
        positions = torch.arange(past_len, past_len + seq).repeat(batch, 1)
        if name.startswith("prefill"):
            mask[:, 0] = 0  # the masked slot; prompts start at position 0
            positions -= past_len
            if batch > 1:
                pad = seq // 2
                mask[0, 1 : 1 + pad] = 0
                positions[0] = torch.clamp(torch.arange(seq) - pad, min=0)
        else:
            mask[0, : past_len // 2] = 0
        past = [torch.randn((batch, kv_heads, past_len, head_dim), generator=generator)
                for _ in range(2 * layers)]  # fmt: skip
        with torch.inference_mode():
            expected = [t.numpy() for t in wrapper(ids, mask, positions, *past)]
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                 "position_ids": positions.numpy()}  # fmt: skip
        feeds.update({n: t.numpy() for n, t in zip(past_names(layers), past, strict=True)})
        actual = session.run(None, feeds)
        diffs[name] = max(float(np.abs(a - e).max()) for a, e in zip(actual, expected, strict=True))
        note(f"{name}: max abs diff {diffs[name]:.2e}")
        if diffs[name] > ATOL or not all(np.isfinite(a).all() for a in actual):
            misses.append(f"{name}: max abs diff {diffs[name]:.3g} exceeds atol={ATOL:g}")
    if misses:
        raise ValidationError("decoder ONNX export does not match PyTorch", misses)
    return diffs


@dataclass
class ExportedDecoder:
    """The decoder graph plus what the generator needs to serve it."""

    onnx_path: Path
    tokenizer: Any  # tokenizers.Tokenizer
    end_ids: list[int]
    layers: int
    kv_heads: int
    head_dim: int
    max_abs_diff: dict[str, float]
    golden: list[dict[str, Any]]  # PyTorch's greedy continuations of GOLDEN_PROMPTS
    # {"template", "bos_token", "eos_token", ...} for tritonize.chat; None: no chat template
    chat_template: dict[str, str | None] | None = None
    profile: Profile | None = None  # the reference traffic's features, for drift


def export_generation(spec: Any, workdir: Path) -> ExportedDecoder:
    """Load `spec.model`, export it with its KV cache to `workdir/model.onnx`, validate it."""
    from tritonize.export.onnx_export import load_tokenizer
    from tritonize.monitor.profile import build_generation_profile

    with step(f"Loading {spec.model_dir}"):
        wrapper, config = load_decoder(spec.model_dir, spec.trust_remote_code)
        limit = decoder_for(config).max_positions(config)
        if spec.max_seq_len > limit:
            raise SpecError(
                f"`max_seq_len` = {spec.max_seq_len} is not allowed: `{config.model_type}` at "
                f"`{spec.model_dir}` takes at most {limit} positions"
            )
        tokenizer, _ = load_tokenizer(spec.model_dir, spec.trust_remote_code)
        end_ids = _end_ids(spec.model_dir, config)
        chat_template = read_chat_template(spec.model_dir, spec.trust_remote_code)
    path = workdir / "model.onnx"
    with step(f"Exporting the decoder with its KV cache (opset {spec.opset})"):
        export_decoder(wrapper, config, path, spec.opset)
    with step("Validating ONNX Runtime against PyTorch (prefill and decode steps)"):
        diffs = validate_decoder(wrapper, config, path)
    with step("Recording PyTorch's greedy continuations for `tritonize verify`"):
        golden = greedy_continuations(wrapper.model, tokenizer, end_ids, spec.max_seq_len)
    profile = build_generation_profile(spec, wrapper.model, tokenizer, end_ids)
    layers, kv_heads, head_dim = decoder_for(config).cache_shape(config)
    return ExportedDecoder(
        path, tokenizer, end_ids, layers, kv_heads, head_dim, diffs, golden, chat_template,
        profile,
    )  # fmt: skip


def read_chat_template(model_dir: Path, trust_remote_code: bool) -> dict[str, str | None] | None:
    """The checkpoint's chat template with the special tokens transformers renders it with,
    after checking that `tritonize.chat` renders it as transformers does; None without one."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(
        model_dir, use_fast=True, local_files_only=True, trust_remote_code=trust_remote_code
    )
    source = hf.chat_template
    if isinstance(source, dict):  # named templates: chat uses the default one, as transformers
        source = source.get("default")
    if not source:
        note("no chat template: the model serves completions, not chat")
        return None
    template: dict[str, str | None] = {"template": source, "bos_token": None, "eos_token": None}
    template.update(hf.special_tokens_map)
    _check_rendering(hf, template)
    return template


def _check_rendering(hf: Any, template: dict[str, str | None]) -> None:
    """A one-turn conversation rendered by tritonize.chat equals transformers' prompt."""
    from tritonize.chat import ChatTemplateError, render_chat

    messages = [{"role": "user", "content": "Hello!"}]
    try:
        expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # the template refuses this conversation: nothing to compare
        return
    try:
        actual = render_chat(template, messages)
    except ChatTemplateError as exc:
        raise ExportError(f"the checkpoint's chat template cannot be served: {exc}") from exc
    if actual != expected:
        raise ExportError(
            "the checkpoint's chat template renders differently from transformers: "
            f"{actual!r} != {expected!r}"
        )


def greedy_continuations(
    model: Any, tokenizer: Any, end_ids: list[int], context_window: int,
    prompts: Sequence[str] = GOLDEN_PROMPTS, new_tokens: int = GOLDEN_NEW_TOKENS,
) -> list[dict[str, Any]]:  # fmt: skip
    """Hugging Face `generate(do_sample=False)` on `prompts`, as the generator serves it: the
    text after the prompt, up to an end id, `new_tokens` or the context window."""
    records = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt).ids
        max_tokens = min(new_tokens, context_window - len(ids))
        if max_tokens < 1:
            continue  # the prompt fills the window
        tensor = torch.tensor([ids])
        with torch.inference_mode():
            out = model.generate(tensor, attention_mask=torch.ones_like(tensor), do_sample=False,
                                 max_new_tokens=max_tokens, eos_token_id=end_ids,
                                 pad_token_id=end_ids[0])  # fmt: skip
        new = out[0, len(ids) :].tolist()
        new = new[: next((i for i, t in enumerate(new) if t in end_ids), len(new))]
        text = tokenizer.decode(ids + new)[len(tokenizer.decode(ids)) :]
        records.append({"prompt": prompt, "max_tokens": max_tokens, "text": text, "tokens": new})
    return records


def _end_ids(model_dir: Path, config: Any) -> list[int]:
    """End-of-sequence ids: generation_config.json's (several allowed), else the config's."""
    import json

    source: Any = None
    generation_config = Path(model_dir) / "generation_config.json"
    if generation_config.exists():
        source = json.loads(generation_config.read_text()).get("eos_token_id")
    if source is None:
        source = getattr(config, "eos_token_id", None)
    if source is None:
        raise ExportError(f"`{model_dir}` declares no eos_token_id: generation could not stop")
    return [int(i) for i in (source if isinstance(source, list) else [source])]
