"""`UniformValleModel`: an ordinary `LlamaForCausalLM` (untied, `hidden_act` from the checkpoint) plus the
`Layout` and the head biases, with one forward per VALL-E pass.

What VALL-E does unlike a stock Llama, all handled here:
- inputs are SUMS of flat-table rows (`sequence.embed`), never single token ids;
- the MLP is gated erf GELU (`hidden_act="gelu"`) for released models;
- heads have biases, and only the head named by the pass is applied;
- positions restart per segment (segmented mode) while the mask stays causal by sequence INDEX, or is
  bidirectional for NAR passes. An explicit 4-D additive mask is always passed: transformers 5, given no
  mask and restarting positions, would treat every restart as a new packed sequence.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from valle_export.config import ValleConfig
from valle_export.layout import Layout, layout_from_config
from valle_export.lora_file import LoraRecord
from valle_export.sequence import PassSpec, attention_allowed

from . import uniform


def llama_config(cfg: ValleConfig, layout: Layout) -> LlamaConfig:
    """The HF config of the uniform model; sizes only from the native config."""
    return LlamaConfig(
        vocab_size=layout.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ffn,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        hidden_act=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def torch_mask(causal: bool, q_len: int, past: int = 0) -> torch.Tensor:
    """[1, 1, q, past+q] float mask: 0 allowed, dtype-min masked (as the original builds it)."""
    allowed = torch.from_numpy(attention_allowed(causal, q_len, past))
    mask = torch.zeros(allowed.shape, dtype=torch.float32)
    mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return mask[None, None]


class UniformValleModel(nn.Module):
    """The reference. `llama.model` is the backbone, `llama.lm_head` the stacked heads."""

    def __init__(self, llama: LlamaForCausalLM, layout: Layout, head_bias: torch.Tensor, cfg: ValleConfig):
        super().__init__()
        self.llama = llama.eval().requires_grad_(False)
        self.layout = layout
        self.cfg = cfg
        self.lora: LoraRecord | None = None  # the adapter merged into the weights (reference_model/lora.py)
        self.register_buffer("head_bias", head_bias.to(torch.float32))

    @classmethod
    def from_native(cls, cfg: ValleConfig, tensors: dict[str, torch.Tensor]) -> "UniformValleModel":
        layout = layout_from_config(cfg)
        llama = LlamaForCausalLM(llama_config(cfg, layout))
        llama.config._attn_implementation = "sdpa"
        head_w, head_b = uniform.stack_heads(layout, tensors)
        state = uniform.backbone_state(cfg, tensors)
        state["model.embed_tokens.weight"] = uniform.stack_tables(layout, tensors)
        state["lm_head.weight"] = head_w
        llama.load_state_dict(state, strict=True)
        return cls(llama, layout, head_b, cfg)

    # --- pieces ---------------------------------------------------------------------------------------
    @property
    def table(self) -> torch.Tensor:
        return self.llama.model.embed_tokens.weight

    def embed(self, rows: np.ndarray) -> torch.Tensor:
        """[L, d] summed inputs, levels added left to right as the original does."""
        rows_t = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        out = self.table[rows_t[:, 0].clamp(min=0)].clone()
        for k in range(1, rows_t.shape[1]):
            used = rows_t[:, k] >= 0
            out[used] = out[used] + self.table[rows_t[used, k]]
        return out

    @torch.no_grad()
    def hidden(self, embeds: torch.Tensor, positions: np.ndarray, causal: bool,
               cache: DynamicCache | None = None) -> torch.Tensor:
        """Final-norm hidden states [L, d] of `embeds` [L, d]; appends to `cache` when given."""
        past = 0 if cache is None else cache.get_seq_length()
        pos = torch.from_numpy(np.asarray(positions, dtype=np.int64))[None]
        out = self.llama.model(
            inputs_embeds=embeds[None],
            attention_mask=torch_mask(causal, embeds.shape[0], past),
            position_ids=pos,
            cache=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state[0]

    def head_logits(self, hidden: torch.Tensor, head: str) -> torch.Tensor:
        """[n, head rows] logits of head `head` (weights and bias of its row range)."""
        h = self.layout.head(head)
        w = self.llama.lm_head.weight[h.start:h.stop]
        return torch.nn.functional.linear(hidden, w, self.head_bias[h.start:h.stop])

    # --- passes ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def pass_logits(self, spec: PassSpec) -> torch.Tensor:
        """Logits [n_outputs, head rows] of one full pass (no cache)."""
        hidden = self.hidden(self.embed(spec.rows), spec.positions, spec.causal)
        return self.head_logits(hidden[spec.out_start:], spec.head)
