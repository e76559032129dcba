"""Registry of the encoder families tritonize exports.

Adding a family is one entry: its `model_type` and, where it differs, how many positions it
can take. Every registered family has a tiny test model (tests/unit/test_export.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tritonize.errors import ExportError


@dataclass(frozen=True)
class EncoderArchitecture:
    """An encoder family fed `input_ids` and `attention_mask` (token types default to 0)."""

    model_type: str
    # RoBERTa-style position ids start after the padding index, which costs positions.
    position_offset: int = 0

    def max_positions(self, config: Any) -> int:
        return int(config.max_position_embeddings) - self.position_offset


ARCHITECTURES: dict[str, EncoderArchitecture] = {
    arch.model_type: arch
    for arch in (
        EncoderArchitecture("bert"),
        EncoderArchitecture("distilbert"),
        EncoderArchitecture("electra"),
        EncoderArchitecture("mpnet", position_offset=2),
        EncoderArchitecture("roberta", position_offset=2),
        EncoderArchitecture("xlm-roberta", position_offset=2),
    )
}


def architecture_for(config: Any) -> EncoderArchitecture:
    """The registered family of a transformers config, or a clear error."""
    model_type = str(getattr(config, "model_type", None))
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ExportError(
            f"model_type `{model_type}` is not supported for export: "
            f"expected one of {', '.join(sorted(ARCHITECTURES))}"
        ) from None
