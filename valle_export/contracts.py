"""Every numeric contract of the product, named once, and the one way errors are measured against them.

Relative error everywhere means max |got - want| / max |want| (over the compared tensor). Bounds are product
contracts (what an export must meet before it appears, what a backend promises) or test floors; the README and
the tests cite these names, so a figure changes in one place. Comparisons are NaN-safe: a NaN error never
meets a bound. Imports: numpy.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

# --- exact backends ---------------------------------------------------------------------------------------
# fp32 backends vs the reference, and the reference vs the original's recorded logits (the original itself
# differs by 1.5e-6 between equivalent passes); check-fixture's exact contract (plus identical argmax/tokens).
LOGITS_REL_EXACT = 1e-4
# KV-cache steps vs a full recompute in the same torch build (measured ~1e-6).
CACHE_VS_RECOMPUTE_REL = 1e-5

# --- approximate backends ---------------------------------------------------------------------------------
GELU_TANH_REL = 2e-3  # gemma's tanh GELU through ggml's fp16 table (measured 1.1e-4 .. 7.1e-4)
F16_KV_REL = 5e-3  # an f16 KV cache on an f32 file (measured ~1e-3)
APPROX_LOGITS_REL = 1e-2  # approximate backends without a measured bound (quantized weights)
# a LoRA adapter GGUF applied by llama.cpp at run time vs the same adapter merged at export: on a GELU (gemma)
# file the fp16 GELU table turns the different rounding into up to 1.2e-4 (fixture mrq-lora); SiLU files stay
# within the exact contract
LORA_RUNTIME_VS_MERGED_REL = 1e-3
APPROX_TOKEN_AGREEMENT = 0.9  # argmax / greedy token agreement floor of approximate backends

# --- exports, verified before they appear -------------------------------------------------------------------
# backbone (and AR step graph) hidden states vs the reference; the weight-only q8_0 / q4_0 / q4_128 graphs
# (MatMulNBits, int8 activations per row and block) measured 1.2e-2 / 1.4e-1 / 1.4e-1 at the tiny demo size and
# 2.2e-2 / 2.8e-1 / - at the released size (random weights: no outliers for the blocks to absorb, the worst case
# for 4 bits); w8a8 (int8 per column x int8 per row) 1.6e-2 tiny
ONNX_HIDDEN_REL = {"fp32": 1e-4, "fp16": 2e-2, "int8": 2.5e-1, "q8_0": 5e-2, "q4_0": 4e-1, "q4_128": 5e-1,
                   "w8a8": 2e-1}
# dequantized GGUF tensor vs its source, per GGML type (f16 rounding ~5e-4, bf16 ~4e-3, 8-bit ~1e-2)
GGUF_TYPE_REL = {"F32": 0.0, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 2e-2, "Q6_K": 5e-2, "Q5_K": 1e-1, "Q5_0": 1e-1,
                 "Q5_1": 1e-1, "Q4_K": 2e-1, "Q4_0": 2e-1, "Q4_1": 2e-1, "Q3_K": 4e-1, "Q2_K": 6e-1}
GGUF_UNKNOWN_TYPE_REL = 1.0
# Teacher-forced greedy agreement (benchmarks/accuracy.py: each AR step and NAR position fed the exact backend's
# codes) of the quantized ONNX variants with fp32, per pass kind, tiny demo models: q8_0 measured AR 97-100 %,
# NAR 98-99 %; q4_0 AR 79-99 %, NAR 69-86 %; q4_128 AR 77 %, NAR 80 %; w8a8 AR 96 %, NAR 97.5 % (worst of 3
# inputs; random weights; the released-size figures are in the README)
TEACHER_FORCED_AGREEMENT = {"q8_0": 0.95, "q4_0": 0.6, "q4_128": 0.6, "w8a8": 0.9}
# a weight-only graph's row in a batch vs the same pass alone (measured 0.0: activations are quantized per row)
BATCH_INVARIANT_REL = 1e-6
# a full pass packed with another into one ggml graph or one llama.cpp decode vs the pass alone: the same
# arithmetic in another summation order (masked scores are exact zeros); on llama.cpp's gemma files the fp16
# GELU table can round an input the other way (measured 4.3e-5 on the tiny demo)
PACKED_PASS_REL = 1e-5
PACKED_PASS_TABLE_GELU_REL = 1e-3
CODEC_DECODER_REL = 1e-4  # EnCodec ONNX decoder waveform vs torch (measured ~1e-7)

# --- llama.cpp relabelling self-test --------------------------------------------------------------------------
# A relabelled pass vs the independent per-token sequence-set method: the same kernels (measured 3e-7); a wrong
# mask gives 0.5-0.8.
RELABEL_SELF_TEST_REL = 1e-3
# ... on a quantized / f16 file or KV cache, where the two methods' different batch shapes take different
# kernels (measured 3.3e-3 with a released-size q4_0 file), still 10x below a wrong mask
RELABEL_SELF_TEST_APPROX_REL = 5e-2


def rel_error(got, want) -> float:
    """max |got - want| / max |want| in float64; NaN when either side holds a NaN or the shapes differ."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return math.nan
    if got.size == 0:
        return 0.0
    diff = np.abs(got - want)
    if not (np.isfinite(diff).all() and np.isfinite(want).all()):
        return math.nan
    return float(diff.max() / max(float(np.abs(want).max()), 1e-30))


def max_abs_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return math.nan
    return float(np.abs(got - want).max()) if got.size else 0.0


def within(error: float, bound: float) -> bool:
    """NaN-safe: a NaN error never meets a bound (a plain `error > bound` test would let it pass)."""
    return bool(error <= bound)


def mismatch_report(expected: Mapping[str, tuple], found: Mapping[str, tuple], limit: int = 6,
                    ignored: frozenset[str] | set[str] = frozenset()) -> str:
    """One line naming missing, unexpected and wrong-shape tensors ('' when the tables agree): the strict
    loader's report (as safetensors' `load_model(strict=True)`), shared by every reader of a tensor table.
    `ignored` names may be present without being expected (tensors a format knowingly drops)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(k for k in found if k not in expected and k not in ignored)
    wrong = sorted(f"{k} {tuple(found[k])} (expected {tuple(expected[k])})"
                   for k in expected if k in found and tuple(found[k]) != tuple(expected[k]))
    parts = []
    for label, items, sep in (("missing", missing, ", "), ("unexpected", unexpected, ", ")):
        if items:
            more = " ..." if len(items) > limit else ""
            parts.append(f"{label} {len(items)} tensor(s): {sep.join(items[:limit])}{more}")
    if wrong:
        parts.append(f"shape mismatch: {'; '.join(wrong[:limit])}{' ...' if len(wrong) > limit else ''}")
    return "; ".join(parts)
