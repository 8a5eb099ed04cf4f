"""The decoder's tensors, named once: one row per per-layer tensor with its HF / native suffix, its GGUF
name (from gguf-py's own `TENSOR_NAMES`) and its shape rule; plus the GGUF names of the global tensors and the
standard GGUF keys the runtimes read.

Used by the checkpoint loader (expected shapes), the GGUF writer and verifier, the GGUF reader and the ggml
backend, so a name or a shape cannot drift between them. Imports: gguf (a core dependency), stdlib.
"""
from __future__ import annotations

import dataclasses

from gguf import Keys, MODEL_TENSOR, TENSOR_NAMES


@dataclasses.dataclass(frozen=True)
class LayerTensor:
    """One per-layer tensor. `shape` is a rule over (d_model, kv width, ffn width): see `shape_for`."""

    suffix: str  # after `model.layers.{i}.` in the native / HF Llama state dict
    gguf: MODEL_TENSOR
    shape: tuple[str, ...]  # symbols: "d", "kv", "ffn"
    lora: bool = False  # adapted by the original's LoRA policy (`self_attn` or `mlp`, not `self_attn.k_proj`)

    def gguf_name(self, layer: int) -> str:
        return f"{TENSOR_NAMES[self.gguf].format(bid=layer)}.weight"

    def shape_for(self, d: int, kv: int, ffn: int) -> tuple[int, ...]:
        sizes = {"d": d, "kv": kv, "ffn": ffn}
        return tuple(sizes[s] for s in self.shape)

    def lora_suffix(self, part: str) -> str:
        """Native adapter tensor after `model.layers.{i}.`: `self_attn.q_proj.lora_A` (part "A" or "B")."""
        return f"{self.suffix.removesuffix('.weight')}.lora_{part}"

    def lora_gguf_name(self, layer: int, part: str) -> str:
        """llama.cpp adapter tensor (convert_lora_to_gguf.py): `blk.0.attn_q.weight.lora_a`."""
        return f"{self.gguf_name(layer)}.lora_{part.lower()}"

    @property
    def is_qk(self) -> bool:
        """Q and K rows are permuted for llama.cpp's interleaved rope layout (arch llama)."""
        return self.gguf in (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K)


LAYER_TENSORS: tuple[LayerTensor, ...] = (
    LayerTensor("self_attn.q_proj.weight", MODEL_TENSOR.ATTN_Q, ("d", "d"), lora=True),
    LayerTensor("self_attn.k_proj.weight", MODEL_TENSOR.ATTN_K, ("kv", "d")),
    LayerTensor("self_attn.v_proj.weight", MODEL_TENSOR.ATTN_V, ("kv", "d"), lora=True),
    LayerTensor("self_attn.o_proj.weight", MODEL_TENSOR.ATTN_OUT, ("d", "d"), lora=True),
    LayerTensor("mlp.gate_proj.weight", MODEL_TENSOR.FFN_GATE, ("ffn", "d"), lora=True),
    LayerTensor("mlp.up_proj.weight", MODEL_TENSOR.FFN_UP, ("ffn", "d"), lora=True),
    LayerTensor("mlp.down_proj.weight", MODEL_TENSOR.FFN_DOWN, ("d", "ffn"), lora=True),
    LayerTensor("input_layernorm.weight", MODEL_TENSOR.ATTN_NORM, ("d",)),
    LayerTensor("post_attention_layernorm.weight", MODEL_TENSOR.FFN_NORM, ("d",)),
)
LAYER_SUFFIXES = tuple(t.suffix for t in LAYER_TENSORS)
LORA_TENSORS = tuple(t for t in LAYER_TENSORS if t.lora)  # q, v, o, gate, up, down
LORA_PARTS = ("A", "B")  # A [rank, in], B [out, rank]: W' = W + (alpha / rank) B A

GGUF_TOKEN_EMBD = f"{TENSOR_NAMES[MODEL_TENSOR.TOKEN_EMBD]}.weight"  # input table + every head's rows
GGUF_OUTPUT_NORM = f"{TENSOR_NAMES[MODEL_TENSOR.OUTPUT_NORM]}.weight"

# standard GGUF keys ({arch} templates) the runtimes read back
KEY_ARCH = Keys.General.ARCHITECTURE
KEY_BLOCKS = Keys.LLM.BLOCK_COUNT
KEY_EMBD = Keys.LLM.EMBEDDING_LENGTH
KEY_FFN = Keys.LLM.FEED_FORWARD_LENGTH
KEY_HEADS = Keys.Attention.HEAD_COUNT
KEY_HEADS_KV = Keys.Attention.HEAD_COUNT_KV
KEY_RMS_EPS = Keys.Attention.LAYERNORM_RMS_EPS
KEY_ROPE_BASE = Keys.Rope.FREQ_BASE

# Q/K row layouts in a GGUF (`valle.qk_layout`)
QK_NEOX = "neox"  # HF rotate-half order, as stored in the uniform model
QK_INTERLEAVED = "interleaved"  # permuted per head for llama.cpp's arch llama
