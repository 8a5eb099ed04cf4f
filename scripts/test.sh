#!/usr/bin/env bash
# Install valle-export with its test extras into .venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_deps.sh
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
# ggml-python builds ggml from source: with llamafile's matmul, batched passes are about 1.7x faster
CMAKE_ARGS="-DGGML_LLAMAFILE=ON" pip install -q torch==2.13.0 -e '.[test]'
# the `vocos` package, only as a reference for parity_tests/test_vocos.py: --no-deps, so never torchaudio or
# encodec (they break transformers here); without it that one test skips
pip install -q --no-deps vocos==0.1.0 || echo "vocos not installed: its package comparison test will skip"
ruff check .  # the linter configuration is in pyproject.toml
python -m pytest -q --durations=25
