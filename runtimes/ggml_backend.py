"""The ggml backend: the exact VALL-E graph built on ggml (ggml-python bindings), from our GGUF.

Stock llama.cpp cannot run the released models exactly (no erf GELU, and its causal mask compares position
values). ggml itself can: this backend builds the decoder per pass with RMSNorm, RoPE from an explicit
int32 positions tensor (NEOX mode for HF rotate-half files, normal mode for Q/K-permuted `llama` files),
attention with an explicit additive mask (index-causal or bidirectional), gated erf GELU
(`ggml_geglu_erf_split`) or SiLU, and the final norm; heads (with biases) are applied on the host. The KV
cache lives in persistent ggml tensors (K as [head_dim, heads, n_ctx], V transposed as [n_ctx, d] so its
attention view needs no copy); each graph writes its new K/V into views of the cache (`ggml_cpy`) before
attending over the first past + n positions. Graph memory comes from one `ggml_gallocr` kept for the
backend's life: its buffer survives across passes (no page faults per step) and intermediates that are dead
within a pass share memory. Cached AR steps (one position) reuse one built graph (`_StepGraph`) per span of
STEP_SPAN positions: the new K/V go in with `ggml_set_rows` at indices given as inputs, attention runs over
the whole span under a mask, so only the inputs change from step to step.

Weights are loaded once by ggml's gguf loader into plain C memory (CPU only); every handle is owned by this
object and freed in `close`. Shapes are validated before every call: a failed ggml assertion would abort
the whole process.
"""
from __future__ import annotations

import ctypes
import math
import os
from pathlib import Path

import numpy as np
from gguf import MODEL_TENSOR as MT

from valle_export import exactness, sequence as seq, tensor_table as tt
from valle_export.backend_base import CachedPassBackend
from valle_export.backend_options import DEFAULT_N_CTX
from valle_export.errors import BadInput

from .gguf_file import GgufModelFile
from .host_weights import apply_head

KV_GGML_TYPES = {"f32": 4, "f16": 2}  # KV cache type -> bytes per element
GRAPH_NODES = 8192  # upper bound of graph nodes per pass (12 layers use ~600)
NODES_PER_LAYER = 96  # tensor headers per layer in the meta context (~40 used), plus GLOBAL_NODES
GLOBAL_NODES = 64
# a cached AR step runs on a graph built once and reused while the sequence fits its attention span (a multiple
# of STEP_SPAN positions; the mask hides the span's unused tail): building a graph from Python costs ~1.7 ms,
# a step's compute 10-15 ms at the released shape
STEP_SPAN = 64
# ggml_rope_ext's YaRN arguments for plain RoPE: n_ctx_orig 0, freq_scale 1, ext_factor 0, attn_factor 1,
# beta_fast 32, beta_slow 1 (llama.cpp's defaults; with ext_factor 0 they do not change the rotation)
ROPE_PLAIN = dict(n_ctx_orig=0, freq_scale=1.0, ext_factor=0.0, attn_factor=1.0, beta_fast=32.0, beta_slow=1.0)


def _meta_bytes(g, n_layers: int) -> int:
    """Bytes of tensor headers and graph bookkeeping one decoder graph needs (no tensor data)."""
    return ((n_layers * NODES_PER_LAYER + GLOBAL_NODES) * g.ggml_tensor_overhead()
            + g.ggml_graph_overhead_custom(GRAPH_NODES, False))


def _headers_context(g, buffer: np.ndarray):
    """A no_alloc ggml context whose tensor headers live in `buffer` (kept alive by the caller)."""
    return g.ggml_init(g.ggml_init_params(mem_size=buffer.nbytes, mem_buffer=buffer.ctypes.data_as(ctypes.c_void_p),
                                          no_alloc=True))


class GgmlBackend(CachedPassBackend):
    name = "ggml"

    def __init__(self, path: str | Path, threads: int = 0, n_ctx: int = DEFAULT_N_CTX, kv_type: str = "f32"):
        try:
            import ggml
        except ImportError:
            raise BadInput("the ggml backend needs ggml-python (pip install 'valle-export[ggml]')") from None
        self._g = ggml
        self.file = GgufModelFile.open(path)
        self.layout = self.file.layout
        hp = self.file.hparams  # the GGUF's standard keys, as llama.cpp reads them
        self.n_layers, self.n_heads, self.d = hp.n_layers, hp.n_heads, hp.n_embd
        self.head_dim = self.d // self.n_heads
        self.eps, self.theta = hp.rms_eps, hp.rope_base
        self.rope_mode = ggml.GGML_ROPE_TYPE_NEOX if self.file.qk_layout == tt.QK_NEOX else 0
        self.threads = threads or (os.cpu_count() or 1)  # 0 = every core, as onnxruntime and llama.cpp do
        if kv_type not in KV_GGML_TYPES:
            raise BadInput(f"kv_type {kv_type!r} is not one of {', '.join(KV_GGML_TYPES)}")
        # f16 halves the bytes an AR step reads from the cache (at 800 positions as many as a q4 file's weights)
        self.kv_type = kv_type
        self.verdicts = exactness.ggml_verdicts(self.file.weight_types, kv_type)
        self.exact = exactness.all_exact(self.verdicts)
        self.approximation = exactness.approximation(self.verdicts)
        self.refused_kinds: set[str] = set()
        self.table = self.file.input_table()  # our graph does not scale inputs (gemma's sqrt(d) is llama.cpp's)
        self.head_w, self.head_b = self.file.head_weights(), self.file.head_biases()
        self.n_ctx = n_ctx
        self._load_weights(Path(path))
        self._cache_ctx = None
        self._meta: np.ndarray | None = None  # tensor headers of the graph being built (no data)
        self._cpu = ggml.ggml_backend_cpu_init()
        ggml.ggml_backend_cpu_set_n_threads(self._cpu, self.threads)
        # one graph allocator for the backend's life: it keeps its buffer across passes and reuses the memory
        # of intermediates that are dead within a pass
        self._galloc = ggml.ggml_gallocr_new(ggml.ggml_backend_get_default_buffer_type(self._cpu))
        self._step_graph: _StepGraph | None = None
        self._cached = 0

    def _load_weights(self, path: Path) -> None:
        g = self._g
        holder = g.ggml_context_p_ctypes()
        params = g.gguf_init_params(no_alloc=False, ctx=ctypes.pointer(holder))
        self._gguf = g.gguf_init_from_file(str(path).encode(), params)
        if not self._gguf or not holder.value:
            raise BadInput("ggml's gguf loader could not read this file", path)
        ctx = self._wctx = holder.value
        self.w = {}
        names = [tt.GGUF_OUTPUT_NORM] + [row.gguf_name(i) for i in range(self.n_layers) for row in tt.LAYER_TENSORS]
        for name in names:
            t = g.ggml_get_tensor(ctx, name.encode())
            if not t:
                raise BadInput(f"GGUF has no tensor {name}", path)
            self.w[name] = t

    def close(self) -> None:
        g = getattr(self, "_g", None)
        if g is None:
            return
        if getattr(self, "_step_graph", None) is not None:
            self._step_graph.free()
            self._step_graph = None
        if getattr(self, "_wctx", None):
            g.ggml_free(self._wctx)
            self._wctx = None
        if getattr(self, "_cache_ctx", None):
            g.ggml_free(self._cache_ctx)
            self._cache_ctx = None
        if getattr(self, "_galloc", None):
            g.ggml_gallocr_free(self._galloc)
            self._galloc = None
        if getattr(self, "_cpu", None):
            g.ggml_backend_free(self._cpu)
            self._cpu = None
        if getattr(self, "_gguf", None):
            g.gguf_free(self._gguf)
            self._gguf = None

    def __del__(self):
        self.close()

    def _layer_weights(self, layer: int):
        """Layer `layer`'s weight tensors by gguf-py tensor kind (names from valle_export.tensor_table)."""
        by_kind = {row.gguf: self.w[row.gguf_name(layer)] for row in tt.LAYER_TENSORS}
        return by_kind.__getitem__

    # --- graph -------------------------------------------------------------------------------------------
    def _ensure_cache(self) -> None:
        """Persistent K/V tensors for `n_ctx` positions in their own context (allocated once)."""
        if self._cache_ctx is not None:
            return
        g = self._g
        per = 2 * self.n_layers
        kv = g.GGML_TYPE_F16 if self.kv_type == "f16" else g.GGML_TYPE_F32
        size = per * self.n_ctx * self.d * KV_GGML_TYPES[self.kv_type] + (per + 8) * g.ggml_tensor_overhead()
        self._cache_ctx = g.ggml_init(g.ggml_init_params(mem_size=size, mem_buffer=None, no_alloc=False))
        if not self._cache_ctx:
            raise MemoryError(f"cannot allocate a KV cache of {size >> 20} MiB")
        self._kc = [g.ggml_new_tensor_3d(self._cache_ctx, kv, self.head_dim, self.n_heads, self.n_ctx)
                    for _ in range(self.n_layers)]
        self._vc = [g.ggml_new_tensor_2d(self._cache_ctx, kv, self.n_ctx, self.d)
                    for _ in range(self.n_layers)]
        for t in self._kc + self._vc:  # a step attends over a whole span: masked cells must hold finite values
            ctypes.memset(g.ggml_get_data(t), 0, g.ggml_nbytes(t))

    def _meta_context(self):
        """A no_alloc context for the graph's tensor headers, on a reused buffer."""
        need = _meta_bytes(self._g, self.n_layers)
        if self._meta is None or self._meta.nbytes < need:
            self._meta = np.zeros(need, dtype=np.uint8)
        return _headers_context(self._g, self._meta)

    def _input(self, ctx, array: np.ndarray, gtype: int, pending: list):
        """A graph input for `array` (numpy shape = ggml dims reversed); its data is copied after allocation."""
        g = self._g
        dims = list(reversed(array.shape))
        make = {1: g.ggml_new_tensor_1d, 2: g.ggml_new_tensor_2d, 3: g.ggml_new_tensor_3d}[len(dims)]
        t = make(ctx, gtype, *dims)
        g.ggml_set_input(t)
        pending.append((t, array))
        return t

    def _norm(self, ctx, x, weight):
        g = self._g
        return g.ggml_mul(ctx, g.ggml_rms_norm(ctx, x, self.eps), weight)

    def _attention(self, ctx, gf, x, pos, mask, layer: int, past: int, n: int, rows=None, span: int = 0):
        """x [d, n] -> attention output [d, n]; writes this pass's K/V into the cache at `past`, or (a step
        graph, n = 1) at the indices in `rows` = (k index [1], v indices [d]) and attends over `span` cells."""
        g, hd, H, d = self._g, self.head_dim, self.n_heads, self.d
        w = self._layer_weights(layer)
        q = g.ggml_reshape_3d(ctx, g.ggml_mul_mat(ctx, w(MT.ATTN_Q), x), hd, H, n)
        k = g.ggml_reshape_3d(ctx, g.ggml_mul_mat(ctx, w(MT.ATTN_K), x), hd, H, n)
        v = g.ggml_mul_mat(ctx, w(MT.ATTN_V), x)  # [d, n]
        r = ROPE_PLAIN
        rope = (r["n_ctx_orig"], self.theta, r["freq_scale"], r["ext_factor"], r["attn_factor"], r["beta_fast"],
                r["beta_slow"])
        q = g.ggml_rope_ext(ctx, q, pos, None, hd, self.rope_mode, *rope)
        k = g.ggml_rope_ext(ctx, k, pos, None, hd, self.rope_mode, *rope)
        kc, vc = self._kc[layer], self._vc[layer]
        knb, vnb = kc.contents.nb, vc.contents.nb
        if rows is None:
            k_dst = g.ggml_view_3d(ctx, kc, hd, H, n, knb[1], knb[2], past * knb[2])
            v_dst = g.ggml_view_2d(ctx, vc, n, d, vnb[1], past * vnb[0])
            g.ggml_build_forward_expand(gf, g.ggml_cpy(ctx, k, k_dst))
            g.ggml_build_forward_expand(gf, g.ggml_cpy(ctx, g.ggml_transpose(ctx, v), v_dst))
            n_kv = past + n
        else:  # K rows are positions; V is transposed, so its new column is d single-element rows
            k_rows = g.ggml_view_2d(ctx, kc, hd * H, self.n_ctx, knb[2], 0)
            v_cells = g.ggml_view_2d(ctx, vc, 1, self.n_ctx * d, vnb[0], 0)
            g.ggml_build_forward_expand(gf, g.ggml_set_rows(ctx, k_rows, g.ggml_reshape_2d(ctx, k, hd * H, 1),
                                                            rows[0]))
            g.ggml_build_forward_expand(gf, g.ggml_set_rows(ctx, v_cells, g.ggml_reshape_2d(ctx, v, 1, d), rows[1]))
            n_kv = span
        k_all = g.ggml_permute(ctx, g.ggml_view_3d(ctx, kc, hd, H, n_kv, knb[1], knb[2], 0), 0, 2, 1, 3)
        v_all = g.ggml_view_3d(ctx, vc, n_kv, hd, H, vnb[1], vnb[1] * hd, 0)  # [n_kv, hd, H]
        qp = g.ggml_permute(ctx, q, 0, 2, 1, 3)  # [hd, n, H]
        if n > 1:  # a long pass: one copy into contiguous layouts pays for itself in the two matmuls (~13 %)
            k_all, qp = g.ggml_cont(ctx, k_all), g.ggml_cont(ctx, qp)
        scores = g.ggml_soft_max_ext(ctx, g.ggml_mul_mat(ctx, k_all, qp), mask, 1.0 / math.sqrt(hd), 0.0)
        out = g.ggml_cont(ctx, g.ggml_permute(ctx, g.ggml_mul_mat(ctx, v_all, scores), 0, 2, 1, 3))  # [hd, H, n]
        return g.ggml_mul_mat(ctx, w(MT.ATTN_OUT), g.ggml_reshape_2d(ctx, out, d, n))

    def _ffn(self, ctx, x, layer: int):
        g = self._g
        w = self._layer_weights(layer)
        gate, up = g.ggml_mul_mat(ctx, w(MT.FFN_GATE), x), g.ggml_mul_mat(ctx, w(MT.FFN_UP), x)
        act = g.ggml_geglu_erf_split(ctx, gate, up) if self.layout.hidden_act == "gelu" else \
            g.ggml_swiglu_split(ctx, gate, up)
        return g.ggml_mul_mat(ctx, w(MT.FFN_DOWN), act)

    def _decoder(self, ctx, gf, x, pos, mask, past: int, n: int, rows=None, span: int = 0):
        """The layers and the final norm on x [d, n] (an output tensor of graph `gf`)."""
        g = self._g
        for layer in range(self.n_layers):
            attn = self._attention(ctx, gf, self._norm(ctx, x, self._layer_weights(layer)(MT.ATTN_NORM)),
                                   pos, mask, layer, past, n, rows, span)
            h = g.ggml_add(ctx, x, attn)
            ffn = self._ffn(ctx, self._norm(ctx, h, self._layer_weights(layer)(MT.FFN_NORM)), layer)
            x = g.ggml_add(ctx, h, ffn)
        out = self._norm(ctx, x, self.w[tt.GGUF_OUTPUT_NORM])
        g.ggml_set_output(out)
        g.ggml_build_forward_expand(gf, out)
        return out

    def _ready_for(self, positions: int) -> None:
        """Refuse a pass that would not fit the context (one line), then make sure the cache exists."""
        if positions > self.n_ctx:
            raise BadInput(f"pass of {positions} positions exceeds the ggml context ({self.n_ctx}); raise n_ctx")
        self._ensure_cache()

    def run(self, embeds: np.ndarray, positions: np.ndarray, causal: bool, past: int = 0,
            mask: np.ndarray | None = None) -> np.ndarray:
        """Final-norm hidden [n, d] for `embeds` placed after `past` cached positions (written to the cache).
        `mask` [n, past + n] (additive) replaces the causal / bidirectional one (packed batches)."""
        g = self._g
        n = len(embeds)
        if embeds.shape != (n, self.d) or len(positions) != n or n == 0:
            raise ValueError(f"bad pass shapes: embeds {embeds.shape}, positions {len(positions)}")
        self._ready_for(past + n)
        ctx = self._meta_context()
        pending = []
        try:
            gf = g.ggml_new_graph_custom(ctx, GRAPH_NODES, False)
            x = self._input(ctx, np.ascontiguousarray(embeds, np.float32), g.GGML_TYPE_F32, pending)
            pos = self._input(ctx, np.ascontiguousarray(positions, np.int32), g.GGML_TYPE_I32, pending)
            mask = np.ascontiguousarray(seq.additive_mask(causal, n, past)[0, 0] if mask is None else mask,
                                        dtype=np.float32)
            mask = self._input(ctx, mask, g.GGML_TYPE_F32, pending)
            out = self._decoder(ctx, gf, x, pos, mask, past, n)
            if not g.ggml_gallocr_alloc_graph(self._galloc, gf):
                raise MemoryError("ggml could not allocate the graph")
            for tensor, array in pending:
                ctypes.memmove(g.ggml_get_data(tensor), array.ctypes.data, array.nbytes)
            g.ggml_backend_graph_compute(self._cpu, gf)
            from ggml.utils import to_numpy

            return np.array(to_numpy(out), dtype=np.float32).reshape(n, self.d)
        finally:
            g.ggml_free(ctx)

    def step(self, embeds: np.ndarray, position: int) -> np.ndarray:
        """Final-norm hidden [1, d] of one causal position after the `_cached` cached ones, on the step graph
        of its span (built when the sequence first reaches that span, then reused)."""
        past = self._cached
        self._ready_for(past + 1)
        span = min(self.n_ctx, -(-(past + 1) // STEP_SPAN) * STEP_SPAN)
        if self._step_graph is None or self._step_graph.span != span:
            if self._step_graph is not None:
                self._step_graph.free()
            self._step_graph = _StepGraph(self, span)
        return self._step_graph.compute(embeds, position, past)

    # --- several passes in one graph -------------------------------------------------------------------------
    def batch_logits(self, specs: list[seq.PassSpec]) -> list[np.ndarray]:
        """Full passes of several specs in ONE graph (a guided pair: NAR-len's conditional and guidance-free
        pass, or a guided NAR level): the positions packed end to end under a block-diagonal mask, each block
        the spec's own (causal or bidirectional), so every weight is read once for all of them and a pass
        sees only its own positions (masked scores are exactly zero after the softmax)."""
        for spec in specs:
            self._check_pass(spec)
        self._cached = 0  # a full pass overwrites the cache's first positions
        starts = np.cumsum([0] + [s.length for s in specs])
        mask = np.full((starts[-1], starts[-1]), seq.NEG_INF, dtype=np.float32)
        for spec, a, b in zip(specs, starts, starts[1:]):
            mask[a:b, a:b] = seq.additive_mask(spec.causal, spec.length)[0, 0]
        hidden = self.run(np.concatenate([seq.embed(self.table, s.rows) for s in specs]),
                          np.concatenate([s.positions for s in specs]), False, 0, mask)
        return [self.head_logits(hidden[a + s.out_start:b], s.head) for s, a, b in zip(specs, starts, starts[1:])]

    # --- pass plumbing hooks (valle_export.backend_base) -------------------------------------------------
    def head_logits(self, hidden: np.ndarray, head: str) -> np.ndarray:
        return apply_head(hidden, self.head_w[head], self.head_b[head])

    def _full_hidden(self, spec: seq.PassSpec) -> np.ndarray:
        self._cached = 0  # a full pass overwrites the cache's first positions
        return self.run(seq.embed(self.table, spec.rows), spec.positions, spec.causal, 0)

    def _append_hidden(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if len(rows) == 1:
            return self.step(seq.embed(self.table, rows), int(positions[0]))
        return self.run(seq.embed(self.table, rows), positions, True, self._cached)

    def _reset_cache(self) -> None:
        """The cache tensors persist; positions past `_cached` are simply overwritten."""


class _StepGraph:
    """One built, allocated graph for a cached AR step whose sequence fits `span` cache cells: inputs are the
    embedding, the position, the mask over the span (0 up to the new position, -inf after), and the K / V
    cache indices the new position is written to. Owns its tensor headers and its graph allocator (the
    backend's allocator serves other graphs in between and may move its buffer)."""

    def __init__(self, backend: GgmlBackend, span: int):
        g = self._g = backend._g
        self.backend, self.span = backend, span
        self._meta = np.zeros(_meta_bytes(g, backend.n_layers), dtype=np.uint8)  # its own: it outlives passes
        self.ctx = _headers_context(g, self._meta)
        self.galloc = g.ggml_gallocr_new(g.ggml_backend_get_default_buffer_type(backend._cpu))
        ctx, d = self.ctx, backend.d
        self.gf = g.ggml_new_graph_custom(ctx, GRAPH_NODES, False)
        self.x = g.ggml_new_tensor_2d(ctx, g.GGML_TYPE_F32, d, 1)
        self.pos = g.ggml_new_tensor_1d(ctx, g.GGML_TYPE_I32, 1)
        self.mask = g.ggml_new_tensor_2d(ctx, g.GGML_TYPE_F32, span, 1)
        self.k_index = g.ggml_new_tensor_1d(ctx, g.GGML_TYPE_I64, 1)
        self.v_index = g.ggml_new_tensor_1d(ctx, g.GGML_TYPE_I64, d)
        for t in (self.x, self.pos, self.mask, self.k_index, self.v_index):
            g.ggml_set_input(t)
        self.out = backend._decoder(ctx, self.gf, self.x, self.pos, self.mask, 0, 1, (self.k_index, self.v_index),
                                    span)
        if not g.ggml_gallocr_alloc_graph(self.galloc, self.gf):
            raise MemoryError("ggml could not allocate the step graph")
        self._mask = np.full(span, seq.NEG_INF, dtype=np.float32)
        self._v_cells = np.arange(d, dtype=np.int64) * backend.n_ctx  # row i of the transposed V cache
        self._hidden = np.empty(d, dtype=np.float32)

    def _set(self, tensor, array: np.ndarray) -> None:
        ctypes.memmove(self._g.ggml_get_data(tensor), array.ctypes.data, array.nbytes)

    def compute(self, embeds: np.ndarray, position: int, past: int) -> np.ndarray:
        g = self._g
        self._mask[:past + 1] = 0.0
        self._mask[past + 1:] = seq.NEG_INF
        self._set(self.x, np.ascontiguousarray(embeds, dtype=np.float32))
        self._set(self.pos, np.array([position], dtype=np.int32))
        self._set(self.mask, self._mask)
        self._set(self.k_index, np.array([past], dtype=np.int64))
        self._set(self.v_index, self._v_cells + past)
        g.ggml_backend_graph_compute(self.backend._cpu, self.gf)
        ctypes.memmove(self._hidden.ctypes.data, g.ggml_get_data(self.out), self._hidden.nbytes)
        return self._hidden[None].copy()

    def free(self) -> None:
        g = self._g
        if self.galloc:
            g.ggml_gallocr_free(self.galloc)
            self.galloc = None
        if self.ctx:
            g.ggml_free(self.ctx)
            self.ctx = None
