#!/usr/bin/env bash
# Install valle-export into .venv and run the demo on the embedded default model (a seeded random-weight
# checkpoint of the released shape; nothing is downloaded). Outputs go to ./demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q torch==2.13.0 -e '.[export]'
mkdir -p demo
valle-export demo-checkpoint demo/ckpt --size full --seed 0
valle-export convert demo/ckpt demo/uniform
valle-export check-fixture parity_tests/fixtures/mrq-public
echo "== torch reference, greedy AR+NAR, KV cache vs the original's full recompute =="
valle-export generate demo/uniform --max-frames 40 -q
valle-export generate demo/uniform --max-frames 40 --no-cache -q
