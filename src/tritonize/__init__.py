"""tritonize: Hugging Face transformers to tested NVIDIA Triton Inference Server deployments."""

from tritonize.errors import TritonizeError

__version__ = "0.1.0"
__all__ = ["TritonizeError", "__version__"]
