# Triton Inference Server with what tritonize's Python-backend models import (numpy<2 for the
# Python backend, tokenizers, ONNX Runtime), the `tritonize check` run before serving, and
# `tritonize serve` supervising the image's tritonserver.
ARG TRITON_VERSION
FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3

ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY pyproject.toml README.md /opt/tritonize/
COPY src /opt/tritonize/src
RUN pip install /opt/tritonize
# A generation model built with `--target tensorrt` runs its decoder plan from the Python
# backend: that needs TensorRT's Python package, of the image's own TensorRT build (all four
# parts, e.g. 10.13.2.6: wheels are published under no shorter version) so that plans from the
# `build` image load, and CUDA PyTorch (pinned as in pyproject.toml) for the KV cache. NVIDIA's
# index holds the wheels that PyPI's stub packages download. Opt in (a few GB):
# GENERATION_TENSORRT=true docker compose build triton
ARG GENERATION_TENSORRT=false
RUN if [ "$GENERATION_TENSORRT" = "true" ]; then \
        version=$(python3 -c "from tritonize.engine.compat import runtime_tensorrt_version as v; print(v() or '')") \
        && test -n "$version" \
        && pip install --extra-index-url https://pypi.nvidia.com \
            "tensorrt-cu${CUDA_VERSION%%.*}==${version}" "torch==2.13.0" \
        && python3 -c "import sys, tensorrt; sys.exit(tensorrt.__version__ != '${version}')"; \
    fi
COPY docker/serve.sh /usr/local/bin/tritonize-serve
# `tritonize serve` drains on SIGTERM (in-flight requests finish, then the server stops).
STOPSIGNAL SIGTERM
# NVIDIA's entry point stays in front: it sets up CUDA forward compatibility on older
# data-center drivers, then execs ours (signals reach `tritonize serve` directly).
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "/usr/local/bin/tritonize-serve"]
