"""The llama.cpp backend (llama-cpp-python's low-level API, no torch): the same pass API as the reference.

Inputs are summed on the host from the GGUF's own table and fed as embeddings; llama.cpp returns final-norm
hidden states (embeddings mode, no pooling) and the pass's head (with its bias) is applied on the host.
- Causal passes keep llama.cpp's KV cache (prefill, then `extend`); non-causal passes run on a cleared
  cache in one batch (`n_ubatch` >= tokens), sorted by position for gemma/llama (their batches must not
  have decreasing positions) with the outputs put back in sequence order.
- `qwen2vl` files get M-RoPE position arrays: component 0 = sequence index (mask, cache continuity),
  component 1 = the model's position (every rotary dimension).
- Limits are stated, not hidden: a GELU model is approximate (`exact = False`, `approximation` says why),
  and a GELU model with segmented positions refuses causal passes (`RefusedPass`, naming the alternatives).
"""
from __future__ import annotations

import ctypes
import dataclasses
from pathlib import Path

import numpy as np

from valle_export import names, sequence as seq
from valle_export.errors import BadInput, RefusedPass, ValleExportError

from .gguf_file import GgufModelFile
from .host_weights import apply_head

_LOG_CALLBACK = None  # keep a reference: llama.cpp calls it for the life of the process


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    n_ctx: int = 2048  # also the largest non-causal pass (n_batch = n_ubatch = n_ctx)
    threads: int = 0  # 0 = llama.cpp's default
    kv_type: str = "f32"  # f32 (exact for SiLU models) or f16
    flash_attention: bool = False  # on CPU it adds ~7e-4 error even with an f32 cache
    gpu_layers: int = 0


def _silence_llama_logs() -> None:
    global _LOG_CALLBACK
    import llama_cpp

    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def pass_kind(head: str) -> str:
    if head == names.HEAD_AR:
        return "ar"
    if head == names.HEAD_LEN:
        return "len"
    if head == names.HEAD_NAR_LEN:
        return "nar_len"
    return "nar"


class LlamaCppBackend:
    name = "llamacpp"

    def __init__(self, path: str | Path, config: LlamaConfig = LlamaConfig()):
        try:
            import llama_cpp
        except ImportError:
            raise BadInput("the llama.cpp backend needs llama-cpp-python (pip install 'valle-export[llamacpp]')") from None
        self._L = llama_cpp
        self.file = GgufModelFile.open(path)
        self.layout = self.file.layout
        self.config = config
        self.exact = all(v == "exact" for v in self.file.exactness.values()) and config.kv_type == "f32"
        self.approximation = "" if self.exact else "; ".join(sorted(set(
            v for v in self.file.exactness.values() if v != "exact"))) or "f16 KV cache"
        self.table = (self.file.input_table() * np.float32(self.file.input_scale)).astype(np.float32)
        self.head_w, self.head_b = self.file.head_weights(), self.file.head_biases()
        self.mrope = self.file.arch == "qwen2vl"
        self.refused_kinds = {k for k, v in self.file.exactness.items() if v.startswith("refused")}
        self._load(Path(path))
        self._cached = 0

    def _load(self, path: Path) -> None:
        L = self._L
        _silence_llama_logs()
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = self.config.gpu_layers
        self._model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not self._model:
            raise BadInput("stock llama.cpp refused to load this GGUF", path)
        cp = L.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = self.config.n_ctx
        cp.n_seq_max = 1
        cp.embeddings = True
        cp.pooling_type = L.LLAMA_POOLING_TYPE_NONE
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.config.flash_attention else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        kv = {"f32": L.GGML_TYPE_F32, "f16": L.GGML_TYPE_F16}[self.config.kv_type]
        cp.type_k = cp.type_v = kv
        if self.config.threads:
            cp.n_threads = cp.n_threads_batch = self.config.threads
        self._ctx = L.llama_init_from_model(self._model, cp)
        if not self._ctx:
            raise BadInput("llama.cpp could not create a context for this GGUF", path)
        self.n_embd = L.llama_model_n_embd(self._model)

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            self._L.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            self._L.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        self.close()

    # --- llama.cpp calls ---------------------------------------------------------------------------------
    def _clear(self) -> None:
        self._L.llama_memory_clear(self._L.llama_get_memory(self._ctx), True)
        self._cached = 0

    def _decode(self, embeds: np.ndarray, positions: np.ndarray, index_start: int) -> np.ndarray:
        """One batch of embeddings -> hidden states [n, d] (batch order)."""
        L = self._L
        n = len(embeds)
        if n > self.config.n_ctx or index_start + n > self.config.n_ctx:
            raise BadInput(f"pass of {index_start + n} positions exceeds the context ({self.config.n_ctx}); "
                           "raise n_ctx")
        embd = np.ascontiguousarray(embeds, dtype=np.float32)
        if self.mrope:
            pos = np.zeros((4, n), dtype=np.int32)
            pos[0] = index_start + np.arange(n)
            pos[1] = positions
        else:
            pos = np.asarray(positions, dtype=np.int32)
        pos = np.ascontiguousarray(pos.reshape(-1))
        n_seq = np.ones(n, dtype=np.int32)
        seq_ids = np.zeros(n, dtype=np.int32)
        seq_ptrs = (ctypes.POINTER(ctypes.c_int32) * n)(
            *[ctypes.cast(seq_ids.ctypes.data + 4 * i, ctypes.POINTER(ctypes.c_int32)) for i in range(n)])
        outputs = np.ones(n, dtype=np.int8)
        batch = L.llama_batch()
        batch.n_tokens = n
        batch.token = None
        batch.embd = embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        batch.pos = pos.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        batch.n_seq_id = n_seq.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        batch.seq_id = seq_ptrs
        batch.logits = outputs.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        rc = L.llama_decode(self._ctx, batch)
        if rc != 0:
            raise ValleExportError(f"llama_decode failed (code {rc}) on a batch of {n} positions")
        ptr = L.llama_get_embeddings(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(n, self.n_embd)).copy()

    def _check_causal(self, spec: seq.PassSpec) -> None:
        if self.mrope:
            return
        if np.any(np.diff(spec.positions) < 0):
            kind = pass_kind(spec.head)
            reason = self.file.exactness.get(kind, "")
            why = reason.removeprefix("refused: ") if reason.startswith("refused") else \
                "its causal mask compares position values, and this pass restarts positions"
            raise RefusedPass(f"llama.cpp refuses the {kind} pass: {why}", kind)

    def hidden(self, spec: seq.PassSpec) -> np.ndarray:
        """Final-norm hidden states [L, d] of a full pass on a cleared cache, in sequence order."""
        self._clear()
        embeds = seq.embed(self.table, spec.rows)
        L = self._L
        if spec.causal:
            self._check_causal(spec)
            L.llama_set_causal_attn(self._ctx, True)
            return self._decode(embeds, spec.positions, 0)
        L.llama_set_causal_attn(self._ctx, False)
        try:
            if self.mrope:
                return self._decode(embeds, spec.positions, 0)
            order = np.argsort(spec.positions, kind="stable")
            out = np.empty((spec.length, self.n_embd), dtype=np.float32)
            out[order] = self._decode(embeds[order], spec.positions[order], 0)
            return out
        finally:
            L.llama_set_causal_attn(self._ctx, True)
            self._clear()

    def head_logits(self, hidden: np.ndarray, head: str) -> np.ndarray:
        return apply_head(hidden, self.head_w[head], self.head_b[head])

    # --- pass API -----------------------------------------------------------------------------------------
    def logits(self, spec: seq.PassSpec) -> np.ndarray:
        return self.head_logits(self.hidden(spec)[spec.out_start:], spec.head)

    def prefill(self, spec: seq.PassSpec) -> np.ndarray:
        self._clear()
        return self.extend(spec)

    def extend(self, spec: seq.PassSpec) -> np.ndarray:
        if not spec.causal:
            raise ValueError("a KV cache only serves causal passes")
        self._check_causal(spec)
        self._L.llama_set_causal_attn(self._ctx, True)
        new = slice(self._cached, spec.length)
        hidden = self._decode(seq.embed(self.table, spec.rows[new]), spec.positions[new], self._cached)
        self._cached = spec.length
        return self.head_logits(hidden[-1:], spec.head)[0]
