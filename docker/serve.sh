#!/bin/sh
# Entry point of the triton service: refuse plans this TensorRT or GPU cannot load, then run the
# image's tritonserver under `tritonize serve`: a dead stub's model is reloaded, a dead server is
# restarted, SIGTERM drains, and every admin API (model repository, shared memory, statistics,
# trace, logging) needs the key. Extra arguments go to `tritonize serve`.
set -eu
: "${TRITONIZE_API_KEY:?set TRITONIZE_API_KEY: it guards the admin APIs}"
tritonize check /models
# 0.0.0.0 inside the container only: compose publishes the ports on the host's loopback.
exec tritonize serve /models \
    --tritonserver /opt/tritonserver/bin/tritonserver \
    --host 0.0.0.0 \
    --log-file - \
    "$@"
