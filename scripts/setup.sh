#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with the CPU build of PyTorch and the package.
# torch is installed first, pinned, so the package's own `torch==2.13.0` requirement is already met and
# pip never resolves it to a (several GB) CUDA build. Elsewhere than our machines, set
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu to get the CPU wheel from PyTorch's index.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[dev]'
