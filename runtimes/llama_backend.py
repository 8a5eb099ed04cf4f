"""The llama.cpp backend (llama-cpp-python's low-level API, no torch): the same pass API as the reference.

Inputs are summed on the host from the GGUF's own table and fed as embeddings; llama.cpp returns final-norm
hidden states (embeddings mode, no pooling) and the pass's head (with its bias) is applied on the host.
- Causal passes keep llama.cpp's KV cache (prefill, then `extend`); non-causal passes run on a cleared
  cache in one batch (`n_ubatch` >= tokens), sorted by position for gemma/llama (their batches must not
  have decreasing positions) with the outputs put back in sequence order.
- `qwen2vl` files get M-RoPE position arrays: component 0 = sequence index (mask, cache continuity),
  component 1 = the model's position (every rotary dimension).
- gemma / llama files run causal passes with restarting (segmented) positions by relabelling (design.md 3b):
  every token is fed at its model position + 1; a pass is cut into runs where positions rise by 1; before a
  run that restarts at p, the sequence's cached cells are moved to position p - 1 through
  `llama_state_seq_get_data` / `llama_state_seq_set_data` (K and V untouched, `runtimes.llama_state`). Keys
  and queries keep their own model rotations, and the position-causal mask then equals the index-causal one.
  The state format is not a documented API: at load a self-test compares a relabelled two-segment pass with
  an independent method (per-token sequence-id sets in one non-causal batch); any difference refuses the
  causal passes with one line naming the alternatives.
- Limits are stated, not hidden: `verdicts` (from `valle_export.exactness`, decided by the file's arch,
  activation, positions, masks and stored tensor types, and this context's KV type) label every pass kind;
  `exact` is True only when all of them are, `approximation` says why not, and refused passes raise
  `RefusedPass` naming the alternatives.
- On Intel AMX hosts the model loads without llama.cpp's extra buffer types (its AMX kernels crash on quantized
  weights): `runtimes.host_cpu`.
"""
from __future__ import annotations

import collections
import ctypes
import dataclasses
from pathlib import Path

import numpy as np

from valle_export import contracts, exactness, names, sequence as seq
from valle_export.backend_base import CachedPassBackend
from valle_export.backend_options import DEFAULT_N_CTX
from valle_export.errors import BadInput, RefusedPass, ValleExportError

from . import host_cpu
from . import llama_state
from .gguf_file import GgufModelFile
from .host_weights import apply_head

SELF_TEST_POSITIONS = np.array([0, 1, 2, 3, 0, 1, 2, 0, 1])  # three segments: two relabels
SELF_TEST_REL = contracts.RELABEL_SELF_TEST_REL
BATCHED_SEQUENCES = 2  # full passes `batch_logits` packs into one decode (a guided pair)
_LOG_CALLBACK = None  # keep a reference: llama.cpp calls it for the life of the process
LOG_LINES: collections.deque[str] = collections.deque(maxlen=400)  # llama.cpp's recent log, kept for reports


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    n_ctx: int = DEFAULT_N_CTX  # also the largest non-causal pass (n_batch = n_ubatch = n_ctx)
    threads: int = 0  # 0 = llama.cpp's default
    kv_type: str = "f32"  # f32 (exact for SiLU models) or f16
    flash_attention: bool = False  # on CPU it adds ~7e-4 error even with an f32 cache
    gpu_layers: int = 0
    extra_bufts: str | None = None  # auto / on / off: llama.cpp's AMX + repack weight buffers (None: env, else auto)
    lora: Path | None = None  # a LoRA adapter GGUF (valle-export gguf-lora) applied at run time
    lora_scale: float = 1.0


def weight_buffer_types() -> list[str]:
    """Buffer types llama.cpp reported for the weights of the most recent model load ("CPU", "CPU_REPACK",
    "AMX", ...): how the tests prove which kernels run."""
    found = []
    for line in LOG_LINES:
        if "model buffer size" in line:
            found.append(line.split(":", 1)[-1].split("model buffer size")[0].strip())
    return found


def _silence_llama_logs() -> None:
    global _LOG_CALLBACK
    import llama_cpp

    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = llama_cpp.llama_log_callback(
            lambda level, text, data: LOG_LINES.append(text.decode("utf-8", "replace")) if text else None)
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


class LlamaCppBackend(CachedPassBackend):
    name = "llamacpp"

    def __init__(self, path: str | Path, config: LlamaConfig = LlamaConfig()):
        try:
            import llama_cpp
        except ImportError:
            raise BadInput("the llama.cpp backend needs llama-cpp-python "
                           "(pip install 'valle-export[llamacpp]')") from None
        self._L = llama_cpp
        self.file = GgufModelFile.open(path)
        self.layout = self.file.layout
        self.config = config
        self.table = (self.file.input_table() * np.float32(self.file.input_scale)).astype(np.float32)
        self.head_w, self.head_b = self.file.head_weights(), self.file.head_biases()
        self.mrope = self.file.arch == "qwen2vl"
        self._cached, self._last_fed = 0, None
        self._state_buf = None
        self._load(Path(path))
        self.relabelling = not self.mrope and self.layout.position_mode == names.POSITIONS_SEGMENTED
        self.state_problem = self._self_test() if self.relabelling else ""
        self.verdicts = self.file.llamacpp_verdicts(config.kv_type, self.state_problem)
        self.exact = exactness.all_exact(self.verdicts)
        self.approximation = exactness.approximation(self.verdicts)
        self.refused_kinds = exactness.refused_kinds(self.verdicts)

    def _context_params(self, n_ctx: int, n_seq: int = 1):
        L = self._L
        cp = L.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
        cp.n_seq_max = n_seq
        cp.kv_unified = True
        cp.embeddings = True
        cp.pooling_type = L.LLAMA_POOLING_TYPE_NONE
        cp.flash_attn_type = (L.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.config.flash_attention
                              else L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        kv = {"f32": L.GGML_TYPE_F32, "f16": L.GGML_TYPE_F16}[self.config.kv_type]
        cp.type_k = cp.type_v = kv
        if self.config.threads:
            cp.n_threads = cp.n_threads_batch = self.config.threads
        return cp

    def _load(self, path: Path) -> None:
        L = self._L
        _silence_llama_logs()
        LOG_LINES.clear()
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = self.config.gpu_layers
        self.extra_bufts = host_cpu.use_extra_bufts(self.config.extra_bufts)
        mp.use_extra_bufts = self.extra_bufts
        self._model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not self._model:
            raise BadInput("stock llama.cpp refused to load this GGUF", path)
        self.adapter = None
        if self.config.lora is not None:
            from .llama_lora import load_adapter

            tail = lambda: next((line.strip() for line in reversed(LOG_LINES) if line.strip()), "")  # noqa: E731
            self.adapter = load_adapter(L, self._model, Path(self.config.lora), self.file.arch,
                                        self.config.lora_scale, tail)
        # two sequences: a guided pair of full passes runs as one batch (`batch_logits`); the unified KV
        # cache keeps one pool of cells, so this costs no memory
        self._ctx = self._new_context(self._context_params(self.config.n_ctx, n_seq=BATCHED_SEQUENCES))
        if not self._ctx:
            raise BadInput("llama.cpp could not create a context for this GGUF", path)
        self.n_embd = L.llama_model_n_embd(self._model)

    def _new_context(self, params):
        """A context of the model with the run-time adapter (if any) set on it."""
        ctx = self._L.llama_init_from_model(self._model, params)
        if ctx and self.adapter is not None:
            from .llama_lora import apply_adapter

            apply_adapter(self._L, ctx, self.adapter)
        return ctx

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
        self._cached, self._last_fed = 0, None

    def _decode(self, embeds: np.ndarray, positions: np.ndarray, index_start: int, ctx=None,
                seq_lists: list[list[int]] | None = None) -> np.ndarray:
        """One batch of embeddings -> hidden states [n, d] (batch order). `seq_lists` gives each token its
        sequence ids (default: sequence 0)."""
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
        seq_lists = seq_lists or [[0]] * n
        n_seq = np.array([len(ids) for ids in seq_lists], dtype=np.int32)
        seq_ids = np.array([i for ids in seq_lists for i in ids], dtype=np.int32)
        offsets = np.concatenate([[0], np.cumsum(n_seq)[:-1]])
        seq_ptrs = (ctypes.POINTER(ctypes.c_int32) * n)(
            *[ctypes.cast(seq_ids.ctypes.data + 4 * int(o), ctypes.POINTER(ctypes.c_int32)) for o in offsets])
        outputs = np.ones(n, dtype=np.int8)
        batch = L.llama_batch()
        batch.n_tokens = n
        batch.token = None
        batch.embd = embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        batch.pos = pos.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        batch.n_seq_id = n_seq.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        batch.seq_id = seq_ptrs
        batch.logits = outputs.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        ctx = ctx or self._ctx
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise ValleExportError(f"llama_decode failed (code {rc}) on a batch of {n} positions")
        ptr = L.llama_get_embeddings(ctx)
        return np.ctypeslib.as_array(ptr, shape=(n, self.n_embd)).copy()

    # --- relabelling (design.md 3b) -------------------------------------------------------------------------
    def _relabel(self, position: int) -> None:
        """Move every cached cell of sequence 0 to `position` (K and V untouched), checked after write-back."""
        L = self._L
        size = L.llama_state_seq_get_size(self._ctx, 0)
        if self._state_buf is None or len(self._state_buf) < size:
            self._state_buf = (ctypes.c_uint8 * size)()
        got = L.llama_state_seq_get_data(self._ctx, self._state_buf, size, 0)
        if got != size:
            raise llama_state.StateFormatError(f"llama_state_seq_get_data wrote {got} of {size} bytes")
        blob = np.frombuffer(self._state_buf, dtype=np.uint8, count=size)
        llama_state.relabel(blob, llama_state.parse(blob), position)
        used = L.llama_state_seq_set_data(self._ctx, self._state_buf, size, 0)
        if used != size:
            raise llama_state.StateFormatError(f"llama_state_seq_set_data read {used} of {size} bytes")
        mem = L.llama_get_memory(self._ctx)
        lo, hi = L.llama_memory_seq_pos_min(mem, 0), L.llama_memory_seq_pos_max(mem, 0)
        if lo != position or hi != position:
            raise llama_state.StateFormatError(f"cells sit at {lo}..{hi} after relabelling to {position}")

    def _causal(self, embeds: np.ndarray, positions: np.ndarray, index_start: int) -> np.ndarray:
        """Feed causal tokens that follow `index_start` cached ones: runs of rising positions, relabelled at each
        restart. (The count of cached positions is the pass plumbing's `_cached`, kept by the base class.)"""
        if self.mrope or not self.relabelling:
            return self._decode(embeds, positions, index_start)
        fed = np.asarray(positions, dtype=np.int64) + 1  # so that a cell can be moved to p - 1 >= 0
        cuts = np.flatnonzero(np.diff(fed) != 1) + 1
        out = []
        for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(fed)]):
            if self._last_fed is not None and fed[start] != self._last_fed + 1:
                self._relabel(int(fed[start]) - 1)
            out.append(self._decode(embeds[start:stop], fed[start:stop], index_start + start))
            self._last_fed = int(fed[stop - 1])
        return np.concatenate(out)

    def _self_test(self) -> str:
        """'' when a relabelled pass reproduces an independent method on a short three-segment input; else
        one line saying what differs. Run once at load; failure refuses causal passes that restart positions."""
        rows = np.random.default_rng(0).integers(0, len(self.table), len(SELF_TEST_POSITIONS))
        embeds = self.table[rows]
        try:
            self._clear()
            self._L.llama_set_causal_attn(self._ctx, True)
            got = self._causal(embeds, SELF_TEST_POSITIONS, 0)
        except (llama_state.StateFormatError, ValleExportError) as err:
            return f"llama.cpp's saved-state format differs from the one relabelling expects ({err})"
        finally:
            self._clear()
        want = self._index_causal_by_sequence_sets(embeds, SELF_TEST_POSITIONS + 1)
        rel = contracts.rel_error(got, want)
        exact_types = self.file.weight_types <= {"F32"} and self.config.kv_type == "f32"
        bound = SELF_TEST_REL if exact_types else contracts.RELABEL_SELF_TEST_APPROX_REL
        if not contracts.within(rel, bound):
            return (f"llama.cpp's saved-state format differs: a relabelled pass is {rel:.2e} away from the "
                    f"independent check (bound {bound:g})")
        return ""

    def _index_causal_by_sequence_sets(self, embeds: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The independent method of design.md 3b: one non-causal batch on a fresh context where token i
        belongs to sequences {i..T-1}, listed in descending order (measured: this order gives the index-causal
        mask, 3e-7 from the relabelled pass; ascending gives a wrong mask, 0.77), sorted by position."""
        L, n = self._L, len(embeds)
        ctx = self._new_context(self._context_params(max(64, n), n_seq=n))
        if not ctx:
            raise BadInput("llama.cpp could not create the self-test context", self.file.path)
        try:
            L.llama_set_causal_attn(ctx, False)
            order = np.argsort(positions, kind="stable")
            seq_lists = [list(range(n - 1, int(i) - 1, -1)) for i in order]
            out = np.empty((n, self.n_embd), dtype=np.float32)
            out[order] = self._decode(embeds[order], positions[order], 0, ctx, seq_lists)
            return out
        finally:
            L.llama_free(ctx)

    def _check_pass(self, spec: seq.PassSpec) -> None:
        """Causal passes that restart positions run only when the state-format self-test passed."""
        if not spec.causal or self.mrope or not self.state_problem:
            return
        if np.any(np.diff(spec.positions) < 0):
            kind = exactness.pass_kind(spec.head)
            raise RefusedPass(f"llama.cpp refuses the {kind} pass: {self.verdicts[kind].reason}", kind)

    # --- pass plumbing hooks (valle_export.backend_base) -------------------------------------------------
    def _full_hidden(self, spec: seq.PassSpec) -> np.ndarray:
        """Final-norm hidden states [L, d] of a full pass on a cleared cache, in sequence order."""
        if not spec.causal:
            return self._bidirectional([spec])[0]
        self._clear()
        self._L.llama_set_causal_attn(self._ctx, True)
        return self._causal(seq.embed(self.table, spec.rows), spec.positions, 0)

    def _bidirectional(self, specs: list[seq.PassSpec]) -> list[np.ndarray]:
        """Hidden states [L, d] (sequence order) of bidirectional full passes in ONE decode on a cleared cache,
        spec k as sequence k: llama.cpp's mask keeps each sequence to its own cells. Each spec is fed sorted by
        position (qwen2vl files: in sequence order)."""
        self._clear()
        L = self._L
        L.llama_set_causal_attn(self._ctx, False)
        try:
            orders = [np.arange(s.length) if self.mrope else np.argsort(s.positions, kind="stable") for s in specs]
            out = self._decode(np.concatenate([seq.embed(self.table, s.rows)[o] for s, o in zip(specs, orders)]),
                               np.concatenate([s.positions[o] for s, o in zip(specs, orders)]), 0,
                               seq_lists=[[k] for k, s in enumerate(specs) for _ in range(s.length)])
        finally:
            L.llama_set_causal_attn(self._ctx, True)
            self._clear()
        hidden, start = [], 0
        for spec, order in zip(specs, orders):
            h = np.empty((spec.length, self.n_embd), dtype=np.float32)
            h[order] = out[start:start + spec.length]
            start += spec.length
            hidden.append(h)
        return hidden

    # --- several passes in one batch ---------------------------------------------------------------------------
    def batch_logits(self, specs: list[seq.PassSpec]) -> list[np.ndarray]:
        """Full bidirectional passes of several specs (a guided pair: NAR-len's conditional and guidance-free
        pass, or a guided NAR level) in ONE llama_decode (`_bidirectional`): every weight is read once for all.
        Causal specs (relabelled per sequence 0) and batches past the context run one at a time."""
        total = sum(s.length for s in specs)
        if (len(specs) > BATCHED_SEQUENCES or any(s.causal for s in specs) or len(specs) < 2
                or total > self.config.n_ctx):
            return [self.logits(s) for s in specs]
        for spec in specs:
            self._check_pass(spec)
        return [self.head_logits(h[s.out_start:], s.head) for h, s in zip(self._bidirectional(specs), specs)]

    def _append_hidden(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        self._L.llama_set_causal_attn(self._ctx, True)
        return self._causal(seq.embed(self.table, rows), positions, self._cached)

    def _reset_cache(self) -> None:
        self._clear()

    def head_logits(self, hidden: np.ndarray, head: str) -> np.ndarray:
        return apply_head(hidden, self.head_w[head], self.head_b[head])
