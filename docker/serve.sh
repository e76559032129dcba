#!/bin/sh
# Entry point of the triton service: refuse plans this TensorRT or GPU cannot load, then serve
# with the model-repository API behind a key. Extra arguments go to tritonserver.
set -eu
: "${TRITONIZE_API_KEY:?set TRITONIZE_API_KEY: it guards the model-repository API}"
tritonize check /models
exec tritonserver \
    --model-repository=/models \
    --model-control-mode=explicit --load-model='*' \
    --strict-readiness=true \
    --metrics-config=summary_latencies=true \
    --http-restricted-api="model-repository:tritonize-key=${TRITONIZE_API_KEY}" \
    --grpc-restricted-protocol="model-repository:tritonize-key=${TRITONIZE_API_KEY}" \
    "$@"
