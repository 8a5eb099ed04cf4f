#!/usr/bin/env bash
# Install valle-export with its test extras into .venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_deps.sh
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q torch==2.13.0 -e '.[test]'
python -m pytest -q
