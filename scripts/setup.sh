#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with the CPU build of PyTorch and the package.
# torch is installed first and pinned, so pip never resolves it to a (several GB) CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
  || .venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[dev]'
