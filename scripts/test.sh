#!/usr/bin/env bash
# Install what the tests need, then run lint, type checks and every test tier.
# GPU tests skip cleanly on a machine without an NVIDIA GPU and TensorRT.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
.venv/bin/ruff check src tests scripts
.venv/bin/ruff format --check src tests scripts
.venv/bin/mypy src scripts
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest "$@"
