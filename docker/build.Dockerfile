# Builds TensorRT plans with the TensorRT of the Triton image of the same release.
ARG TRITON_VERSION
FROM nvcr.io/nvidia/tensorrt:${TRITON_VERSION}-py3

ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1
COPY pyproject.toml README.md /opt/tritonize/
COPY src /opt/tritonize/src
# The image's own `tensorrt` stays: tritonize does not depend on a TensorRT wheel.
RUN pip install "/opt/tritonize[export]"
WORKDIR /workspace
