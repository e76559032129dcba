#!/usr/bin/env bash
# Create .venv (Python 3.11) with tritonize and everything its tests need. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "tritonize needs Python 3.11"'

# Prometheus (and promtool) from Debian: the monitoring tests run a real one.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    echo "setup: installing Debian's prometheus package ..."
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
fi

[ -x .venv/bin/python ] || { echo "setup: creating .venv ($PYTHON)"; "$PYTHON" -m venv .venv; }
echo "setup: installing tritonize and its pinned dependencies into .venv" \
    "(the first time takes several minutes: torch, onnxruntime, tritonserver) ..."
.venv/bin/python -m pip install --quiet --upgrade pip
# torch==2.13.0 is pinned: the CPU wheel, not a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet -e ".[dev]"


# TensorRT type stubs for mypy, unpacked into .stubs/ rather than installed: installed, their
# stub-only `tensorrt` directory would import as an empty namespace package.
STUBS=tensorrt_stubs-10.13.0.35.1-py3-none-any.whl
if [ ! -f .stubs/tensorrt/__init__.pyi ]; then
    echo "setup: unpacking TensorRT type stubs into .stubs/ ..."
    tmp=$(mktemp -d)
    .venv/bin/python -m pip download --quiet --no-deps -d "$tmp" "tensorrt-stubs==10.13.0.35.1"
    .venv/bin/python - "$tmp/$STUBS" <<'PY'
import pathlib, re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    wheel.extractall(".stubs", [n for n in wheel.namelist() if n.endswith(".pyi")])
# Two generated defects that mypy's parser rejects: a parameter named `in`, and a required
# parameter after defaulted ones (add_scale_nd).
bindings = pathlib.Path(".stubs/tensorrt_bindings/tensorrt.pyi")
text = re.sub(r"\bin: list\[", "in_: list[", bindings.read_text())
text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = 0)")
bindings.write_text(text)
PY
    rm -rf "$tmp"
fi
echo "set up: $(.venv/bin/python --version), tritonize $(.venv/bin/python -c 'import tritonize; print(tritonize.__version__)')"
