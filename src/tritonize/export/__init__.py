"""Hugging Face checkpoint -> ONNX, validated against PyTorch."""

from tritonize.export.architectures import ARCHITECTURES, EncoderArchitecture, architecture_for
from tritonize.export.onnx_export import ExportedModel, export_onnx
from tritonize.export.tasks import TASKS, TaskDefinition

__all__ = [
    "ARCHITECTURES",
    "TASKS",
    "EncoderArchitecture",
    "ExportedModel",
    "TaskDefinition",
    "architecture_for",
    "export_onnx",
]
