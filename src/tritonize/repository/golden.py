"""golden.json beside an ensemble: PyTorch's outputs for fixed texts and the public interface.

Written at build time; `tritonize verify` checks a live deployment against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tritonclient.grpc import model_config_pb2 as mc

from tritonize.repository.configs import ModelConfig
from tritonize.spec import BuildSpec
from tritonize.tasks.tolerances import TOLERANCES

if TYPE_CHECKING:  # the export stack (torch) is not needed to read a golden file
    from tritonize.export import ExportedModel

GOLDEN = "golden.json"


def interface(config: ModelConfig) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs as Triton's model metadata reports them."""

    def describe(tensor: mc.ModelInput | mc.ModelOutput) -> dict[str, Any]:
        dtype = mc.DataType.Name(tensor.data_type).removeprefix("TYPE_")
        batch = [-1] if config.max_batch_size > 0 else []
        return {
            "name": tensor.name,
            "datatype": "BYTES" if dtype == "STRING" else dtype,
            "shape": [*batch, *tensor.dims],
        }

    return {
        "inputs": [describe(t) for t in config.input],
        "outputs": [describe(t) for t in config.output],
    }


def golden_record(spec: BuildSpec, exported: ExportedModel, config: ModelConfig) -> dict[str, Any]:
    """An encoder task's golden inputs and PyTorch's outputs for them."""
    tolerance = TOLERANCES[spec.precision]
    limits = {
        "min_cosine": tolerance.min_cosine,
        "max_probability_diff": tolerance.max_probability_diff,
    }
    return {**_record(spec, config, limits), **exported.golden}


def generation_golden_record(
    spec: BuildSpec, config: ModelConfig, continuations: list[dict[str, Any]]
) -> dict[str, Any]:
    """Greedy continuations by PyTorch (fp32), which a deployment must reproduce: exactly at
    fp32; at fp16/bf16 greedy decoding may part ways at a near tie, so a shared start will do."""
    tolerance = {"min_common_prefix": TOLERANCES[spec.precision].min_common_prefix}
    record = _record(spec, config, tolerance)
    record["texts"] = [c["prompt"] for c in continuations]
    record["continuations"] = continuations
    return record


def _record(spec: BuildSpec, config: ModelConfig, tolerance: dict[str, float]) -> dict[str, Any]:
    """What every golden file holds: the model, its build and the interface."""
    return {
        "model": spec.name,
        "task": spec.task.value,
        "version": spec.version,
        "precision": spec.precision.value,
        "tolerance": tolerance,
        "interface": interface(config),
    }


def write_golden(directory: Path, record: dict[str, Any]) -> Path:
    path = directory / GOLDEN
    path.write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n")
    return path


def read_golden(path: Path) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text()))
