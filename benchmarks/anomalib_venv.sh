#!/usr/bin/env bash
# Creates the throw-away venv .bench-venv/ holding anomalib, used ONLY by benchmarks/metrics.py to time anomalib's
# AUPRO against uniadc.metrics.pro. anomalib is never a dependency of uniadc; delete .bench-venv/ at will.
#
# Usage: bash benchmarks/anomalib_venv.sh        (idempotent: does nothing when the venv already imports anomalib)
# Env:   PYTHON=python3.11 (interpreter to build the venv from), BENCH_VENV=.bench-venv
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
VENV="${BENCH_VENV:-.bench-venv}"
ANOMALIB_VERSION="2.7.0"
# torch is pinned to the project's version: pip is capped at 2.14.1 on these machines, and anomalib's own range
# would otherwise pull a different (multi-GB) build. anomalib 2.7.0's plain install already brings what
# anomalib.metrics imports (lightning, torchmetrics, kornia, opencv-python-headless, matplotlib).
TORCH_VERSION="2.14.1"
TORCHVISION_VERSION="0.29.1"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import anomalib.metrics.aupro" 2>/dev/null; then
    echo "$VENV: anomalib $("$VENV/bin/python" -c 'import anomalib; print(anomalib.__version__)') ready"
    exit 0
fi

echo "building $VENV with anomalib==$ANOMALIB_VERSION torch==$TORCH_VERSION (a few minutes, ~6 GB)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet \
    "anomalib==$ANOMALIB_VERSION" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
"$VENV/bin/python" -c "import anomalib.metrics.aupro, torch; print('anomalib ready, torch', torch.__version__)"
