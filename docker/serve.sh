#!/bin/sh
# Entry point of the triton service: refuse plans this TensorRT or GPU cannot load, then run the
# image's tritonserver under `tritonize serve`: a dead stub's model is reloaded, a dead server is
# restarted, SIGTERM drains, and every admin API (model repository, shared memory, statistics,
# trace, logging) needs the key. Extra arguments go to `tritonize serve`.
# TRITONIZE_MODELS names the repository (default /models, where compose mounts it).
set -eu
: "${TRITONIZE_API_KEY:?set TRITONIZE_API_KEY: it guards the admin APIs}"
models="${TRITONIZE_MODELS:-/models}"

# Whether a manifest in the repository records a version-compatible TensorRT plan.
holds_version_compatible_plan() {
    python3 - "$1" <<'PYTHON'
import json
import sys
from pathlib import Path


def version_compatible(manifest: Path) -> bool:
    try:
        tensorrt = json.loads(manifest.read_text()).get("tensorrt") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return bool(tensorrt.get("version_compatible"))


manifests = Path(sys.argv[1]).glob("*/[0-9]*/manifest.json")
sys.exit(0 if any(version_compatible(m) for m in manifests) else 1)
PYTHON
}

# Triton's TensorRT backend loads a version-compatible plan (its lean runtime is host code) only
# when told to; tell it only where such a plan exists, and tell `tritonize check` that it was.
if holds_version_compatible_plan "$models"; then
    export TRITONIZE_TENSORRT_VERSION_COMPATIBLE=true
    set -- --triton-arg=--backend-config=tensorrt,version-compatible=true "$@"
fi
tritonize check "$models"
# 0.0.0.0 inside the container only: compose publishes the ports on the host's loopback.
exec tritonize serve "$models" \
    --tritonserver /opt/tritonserver/bin/tritonserver \
    --host 0.0.0.0 \
    --log-file - \
    "$@"
