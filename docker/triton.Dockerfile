# Triton Inference Server with what tritonize's Python-backend models import (numpy<2 for the
# Python backend, tokenizers, ONNX Runtime) and the `tritonize check` run before serving.
ARG TRITON_VERSION
FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3

ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY pyproject.toml README.md /opt/tritonize/
COPY src /opt/tritonize/src
RUN pip install /opt/tritonize
COPY docker/serve.sh /usr/local/bin/tritonize-serve
ENTRYPOINT ["/usr/local/bin/tritonize-serve"]
