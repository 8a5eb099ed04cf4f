"""The llama.cpp architectures valle-export writes, as data: which arch for which model, its metadata, and
how the uniform model's tensors are named and transformed for it.

- `gemma` for GELU models: the only stock gated-GELU decoder (tanh GELU, evaluated through an fp16 table on
  CPU: approximate). It multiplies inputs by sqrt(n_embd) inside the graph, so the host divides by it (exact
  when sqrt(n_embd) is a power of two); NEOX rope, so Q/K stay in HF rotate-half order.
- `qwen2vl` for SiLU models: M-RoPE with sections [0, head_dim/2, 0, 0]. Position component 0 (the
  sequence index) drives the causal mask and the cache checks, component 1 (the model's position) drives
  every rotary dimension: exact for segmented and unified positions, causal and bidirectional. NEOX style.
- `llama` for SiLU models on request (`--arch llama`): Q/K rows permuted per head to llama.cpp's
  interleaved rope layout; segmented positions run through the llama.cpp backend's relabelling (design 3b).

Heads cannot be extra tensors (stock llama.cpp refuses a file with tensors it does not know), and a large
metadata array is read element by element by gguf-py. So every head's rows are appended to `token_embd`
after the input table (vocab = table rows + head rows), and their biases go in one small metadata array.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from valle_export import tensor_table as tt

GEMMA, QWEN2VL, LLAMA = "gemma", "qwen2vl", "llama"


@dataclasses.dataclass(frozen=True)
class Target:
    arch: str
    qk_layout: str  # tensor_table.QK_NEOX or QK_INTERLEAVED
    input_scale: float  # host-side factor applied to summed inputs


def choose_arch(hidden_act: str, requested: str | None = None) -> str:
    if hidden_act == "gelu":
        if requested not in (None, GEMMA):
            raise ValueError(f"a GELU model can only be written as arch gemma (asked: {requested})")
        return GEMMA
    if requested == GEMMA:
        raise ValueError("arch gemma computes GELU, this model uses SiLU")
    return requested or QWEN2VL


def make_target(arch: str, hidden_size: int) -> Target:
    """Q/K layout and host input scale of an arch (what llama.cpp computes is `valle_export.exactness`)."""
    if arch == GEMMA:
        return Target(GEMMA, tt.QK_NEOX, 1.0 / math.sqrt(hidden_size))
    return Target(arch, tt.QK_INTERLEAVED if arch == LLAMA else tt.QK_NEOX, 1.0)


def permute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half rows -> llama.cpp interleaved rows, per head: [h, 2, hd/2, d] -> [h, hd/2, 2, d]."""
    out_dim = weight.shape[0]
    half = out_dim // n_heads // 2
    return weight.reshape(n_heads, 2, half, -1).swapaxes(1, 2).reshape(weight.shape)
