#!/usr/bin/env bash
# Create .venv (Python 3.11) with tritonize and everything its tests need. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "tritonize needs Python 3.11"'

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch==2.13.0 is pinned: the CPU wheel, not a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "set up: $(.venv/bin/python --version), tritonize $(.venv/bin/python -c 'import tritonize; print(tritonize.__version__)')"
