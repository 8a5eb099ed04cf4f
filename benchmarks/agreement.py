"""Greedy agreement of stock llama.cpp (relabelling, tanh GELU) with the exact ONNX backend at the released shape.

    python benchmarks/agreement.py [--work DIR] [--seconds 10] [--outtypes f32,f16] [--threads 2]

Uses the released configuration (GELU, segmented positions, non-causal NAR masks) of the seeded demo checkpoint
(made in --work if missing, shared with bench.py), exports ONNX fp32 and the GGUFs, then runs the same greedy
AR+NAR synthesis of a 62-phoneme input with a 3 s prompt for `--seconds` of audio on ONNX and on llama.cpp per
GGUF type, and prints a table: level-0 agreement until the first difference, over the whole output, and every
level, plus the AR step time of each. Random weights: the margins between the top two logits are those of a
random model, so agreement is a lower bound of what a trained model shows.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench import prepare  # noqa: E402
from benchmarks.bench_e2e import forced_ar  # noqa: E402


def conditioning(layout, seed: int = 0):
    from runtimes.pipeline import Conditioning

    rng = np.random.default_rng(seed)
    phn = np.concatenate([[1], rng.integers(3, 256, 60), [2]]).astype(np.int64)
    return Conditioning(phn, 0, rng.integers(0, 1024, (225, 8)).astype(np.int64))


def greedy(backend, cond, frames: int) -> tuple[np.ndarray, float]:
    """(codes [frames, 8] of a forced-length greedy AR (stop token excluded) + greedy NAR, ms per AR step)."""
    from runtimes.pipeline import generate_nar

    codes0, step_s = forced_ar(backend, cond, frames)
    return generate_nar(backend, cond, codes0), 1000 * float(np.mean(step_s))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=REPO / "demo" / "bench")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--outtypes", default="f32,f16")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    outtypes = args.outtypes.split(",")
    prepare(args.work, ["onnx-fp32"] + [f"llamacpp-{t}" for t in outtypes])
    from runtimes.open import open_backend
    from valle_export.backend_options import BackendOptions

    onnx = open_backend(args.work / "onnx", "onnx", BackendOptions(threads=args.threads, provider="cpu"))
    cond = conditioning(onnx.layout)
    frames = int(args.seconds * onnx.layout.frame_rate)
    want, onnx_ms = greedy(onnx, cond, frames)
    rows = [("onnx-fp32 (exact)", len(want), len(want), 1.0, 1.0, onnx_ms)]
    for outtype in outtypes:
        backend = open_backend(args.work / f"model.{outtype}.gguf", "llamacpp",
                               BackendOptions(threads=args.threads, n_ctx=2048))
        got, ms = greedy(backend, cond, frames)
        n = min(len(got), len(want))
        diff = np.flatnonzero(got[:n, 0] != want[:n, 0])
        first = int(diff[0]) if len(diff) else n
        level0 = float((got[:n, 0] == want[:n, 0]).sum() / max(len(got), len(want)))
        every = float((got[:n] == want[:n]).sum() / (max(len(got), len(want)) * want.shape[1]))
        rows.append((f"llamacpp-{outtype} ({backend.approximation or 'exact'})"[:90], len(got), first, level0, every,
                     ms))
        backend.close()
    print(f"\nGreedy AR+NAR, released configuration, {args.seconds:g} s forced ({frames} frames), "
          f"62 phonemes + 3 s prompt, {args.threads} threads")
    print("| backend | frames | identical level-0 prefix (frames) | level-0 agreement | all-level agreement "
          "| AR step (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, first, level0, every, ms in rows:
        print(f"| {name} | {n} | {first} | {level0:.1%} | {every:.1%} | {ms:.1f} |")


if __name__ == "__main__":
    main()
