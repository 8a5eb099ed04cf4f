"""Native tables and heads -> one flat embedding, one stacked head, one bias vector (unused rows zero).

Every native tensor is consumed exactly once: tables by `layout.tables`, heads by `layout.heads`, the
backbone by name, and the rest only if the layout lists it as `dropped` (with the reason).
"""
from __future__ import annotations

import torch

from valle_export import names, tensor_table as tt
from valle_export.config import ValleConfig
from valle_export.layout import Layout


def stack_tables(layout: Layout, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """[vocab, d] flat input table: every native table at its row range."""
    flat = torch.zeros(layout.vocab_size, layout.hidden_size, dtype=torch.float32)
    for t in layout.tables:
        flat[t.start:t.stop] = tensors[t.source].reshape(t.rows, layout.hidden_size)
    return flat


def stack_heads(layout: Layout, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """([vocab, d] head weights, [vocab] biases): each head over the range of the table it predicts."""
    weight = torch.zeros(layout.vocab_size, layout.hidden_size, dtype=torch.float32)
    bias = torch.zeros(layout.vocab_size, dtype=torch.float32)
    for h in layout.heads:
        weight[h.start:h.stop] = tensors[names.native_head_weight(h.index)]
        if h.has_bias:
            bias[h.start:h.stop] = tensors[names.native_head_bias(h.index)]
    return weight, bias


def backbone_state(cfg: ValleConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Llama decoder tensors, named as in `LlamaForCausalLM` (`model.` prefix kept)."""
    state = {names.NATIVE_FINAL_NORM: tensors[names.NATIVE_FINAL_NORM]}
    for layer in range(cfg.n_layers):
        for suffix in tt.LAYER_SUFFIXES:
            key = names.native_layer_tensor(layer, suffix)
            state[key] = tensors[key]
    return state
