#!/usr/bin/env bash
# Install valle-export into .venv and run the demo on the embedded default model: a seeded random-weight
# checkpoint of the released shape (d1024, 16 heads, 12 layers, GELU, segmented positions). Nothing is
# downloaded. Everything is written under ./demo/. Random weights speak gibberish: the demo shows the
# tool chain, its exactness checks and its speed, not a voice.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_deps.sh
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
CMAKE_ARGS="-DGGML_LLAMAFILE=ON" pip install -q torch==2.13.0 -e '.[export,llamacpp,ggml]'
mkdir -p demo
TEXT="The quick brown fox jumps over the lazy dog."

echo "== 1. the default checkpoint (native format), its uniform HF folder, and the golden fixture =="
[ -f demo/ckpt/fp32.sft ] || valle-export demo-checkpoint demo/ckpt --size full --seed 0
valle-export convert demo/ckpt demo/uniform -q
valle-export check-fixture parity_tests/fixtures/mrq-public | tail -1

echo "== 2. export: ONNX backbone + EnCodec graphs + Vocos decoder + GGUF, each verified against the reference =="
valle-export onnx demo/ckpt demo/model
valle-export encodec demo/model -q
valle-export vocos -o demo/model -q
valle-export gguf demo/ckpt -o demo/model/model.f16.gguf --outtype f16

echo "== 3. synthesize on ONNX (exact; decoded with Vocos, as the original) =="
valle-export synthesize demo/model --text "$TEXT" --out demo/onnx.wav --seed 0 --max-duration 4

echo "== 4. stock llama.cpp on the same model: every pass runs (relabelling; tanh GELU + f16: approximate) =="
valle-export synthesize demo/model/model.f16.gguf --text "$TEXT" --out demo/llamacpp.wav --seed 0 \
    --max-duration 4

echo "== 5. the same GGUF on our ggml graph: every pass runs (f16 weights: approximate; an f32 GGUF is exact) =="
valle-export synthesize demo/model/model.f16.gguf --backend ggml --text "$TEXT" --out demo/ggml.wav --seed 0 \
    --max-duration 4

echo "== 6. llama.cpp on a SiLU model of the same shape (arch qwen2vl: exact) =="
[ -f demo/ckpt-silu/fp32.sft ] || valle-export demo-checkpoint demo/ckpt-silu --size full --hidden-act silu -q
valle-export gguf demo/ckpt-silu -o demo/model/silu.f16.gguf --outtype f16 -q
valle-export synthesize demo/model/silu.f16.gguf --text "$TEXT" --out demo/llamacpp-silu.wav --seed 0 \
    --max-duration 4
echo "== 7. the fastest CPU pair (4-bit AR step graph + integer-GEMM NAR, AR+NAR): approximate, 3-4x faster =="
valle-export onnx demo/ckpt -o demo/fast --outtype fast -q
valle-export encodec demo/fast -q
valle-export vocos -o demo/fast -q
valle-export synthesize demo/fast --text "$TEXT" --out demo/fast.wav --seed 0 --max-duration 4 --modality ar+nar
echo "WAVs: $(ls demo/*.wav | tr '\n' ' ')"
