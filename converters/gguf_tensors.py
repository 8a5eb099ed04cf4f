"""The GGUF's tensors and head biases, built once from the uniform model and shared by the writer and the
verifier (so every export materializes its weights once, and `gguf_export` / `gguf_verify` need not import
each other).

Tensor table (n = layers): token_embd [table rows + head rows, d] (the input table, then every head's rows in
layout order: stock llama.cpp refuses extra tensors), output_norm, and per layer the rows of
`valle_export.tensor_table.LAYER_TENSORS`. Q/K rows are permuted for the `interleaved` layout (arch llama).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from valle_export import tensor_table as tt
from valle_export.layout import Layout

from . import gguf_targets as targets


def head_rows(layout: Layout) -> int:
    return sum(h.rows for h in layout.heads)


@dataclasses.dataclass(frozen=True)
class GgufSource:
    """Float32 tensors in file order (before type conversion) and the head-bias vector (`valle.head_bias`)."""

    tensors: dict[str, np.ndarray]
    head_bias: np.ndarray


def token_embd_matrix(model) -> np.ndarray:
    """[table rows + head rows, d]: the flat input table, then each head's rows in layout order."""
    table = model.table.detach().numpy()
    weight = model.llama.lm_head.weight.detach().numpy()
    return np.concatenate([table] + [weight[h.start:h.stop] for h in model.layout.heads]).astype(np.float32)


def head_bias_vector(model) -> np.ndarray:
    bias = model.head_bias.numpy()
    return np.concatenate([bias[h.start:h.stop] for h in model.layout.heads]).astype(np.float32)


def build_source(model, target: targets.Target) -> GgufSource:
    """Every GGUF tensor of `model` for `target`, built once."""
    cfg = model.cfg
    state = {k: v.detach().numpy() for k, v in model.llama.model.state_dict().items()}
    tensors = {tt.GGUF_TOKEN_EMBD: token_embd_matrix(model), tt.GGUF_OUTPUT_NORM: state["norm.weight"]}
    for i in range(cfg.n_layers):
        for row in tt.LAYER_TENSORS:
            w = state[f"layers.{i}.{row.suffix}"]
            if target.qk_layout == tt.QK_INTERLEAVED and row.is_qk:
                w = targets.permute_qk(w, cfg.n_heads)
            tensors[row.gguf_name(i)] = np.ascontiguousarray(w, dtype=np.float32)
    return GgufSource(tensors, head_bias_vector(model))
