"""The onnxruntime backend (numpy + onnxruntime only): same pass API as the reference.

Inputs are summed on the host from the exported table, the backbone graph runs the transformer with an
explicit additive mask and position ids, and the head of the pass is applied on the host. The KV cache is
kept as arrays between `prefill` and `extend`; on CUDA it stays on the device through IOBinding.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from valle_export import graphs, names, sequence as seq
from valle_export.backend_base import CachedPassBackend
from valle_export.backend_options import split_variant
from valle_export.errors import BadInput
from valle_export.layout import Layout

from .batch_cache import BatchCache, batch_mask
from .host_weights import HostWeights
from .onnx_step import StepCache, StepRunner

VARIANT_NOTES = {"fp16": "fp16 weights and compute", "int8": "dynamic int8 MatMuls, one activation scale per call",
                 "q8_0": "8-bit weight blocks, int8 activations per row", "q4_0": "4-bit weight blocks, int8 "
                 "activations per row", "q4_128": "4-bit weight blocks of 128, int8 activations per row",
                 "w8a8": "int8 weights per column, int8 activations per row"}
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """What a user may tune: provider ('auto' = CUDA when present), threads (0 = onnxruntime's default),
    graph optimisation level, and which exported variant to load (backend_options: one variant, `fast`, or
    STEP+BACKBONE)."""

    provider: str = "auto"
    threads: int = 0
    optimization: str = "all"
    variant: str = "fp32"


def read_layout(folder: Path) -> Layout:
    path = folder / names.LAYOUT_FILE
    if not path.is_file():
        raise BadInput(f"no {names.LAYOUT_FILE} (not a valle-export ONNX folder)", folder)
    return Layout.from_json(path.read_bytes(), str(path))


def _providers(choice: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if choice == "auto":
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    wanted = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}.get(choice, choice)
    if wanted not in available:
        raise BadInput(f"execution provider {choice!r} is not available (have: {', '.join(available)})")
    return [wanted, "CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [wanted]


def variant_file(folder: Path, variant: str, step: bool = False) -> Path:
    name = graphs.step_file(variant) if step else graphs.backbone_file(variant)
    path = folder / name
    if not path.is_file():
        have = [p.name for pattern in ("backbone*.onnx", "ar_step*.onnx") for p in sorted(folder.glob(pattern))]
        raise BadInput(f"no {name} (exported graphs here: {', '.join(have) or 'none'})", folder)
    return path


def _has_past(cache: BatchCache | StepCache) -> bool:
    """Whether a cache holds positions (the step graph's attention treats an empty past as a first prompt)."""
    if isinstance(cache, StepCache):
        return cache.rows > 0 and int(cache.lengths.max()) > 0
    return cache.rows > 0 and cache.columns > 0


class OnnxBackend(CachedPassBackend):
    name = "onnx"

    def __init__(self, folder: str | Path, config: SessionConfig = SessionConfig()):
        import onnxruntime as ort

        folder = Path(folder)
        self.layout = read_layout(folder)
        self.weights = HostWeights.load(folder / graphs.WEIGHTS_FILE, self.layout)
        self.step_variant, self.variant = split_variant(config.variant)
        self.path = variant_file(folder, self.variant)
        self._opts = ort.SessionOptions()
        self._opts.intra_op_num_threads = config.threads
        self._opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[config.optimization])
        self._opts.log_severity_level = 3
        self.session = self._session(self.path, config.provider)
        self._check_interface()
        self._check_origin(self.session, self.path)
        self.on_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        self.step_runner = self._open_step(folder, config)
        labels = [f"{self.variant} backbone ({VARIANT_NOTES[self.variant]})"] if self.variant != "fp32" else []
        if self.step_runner is not None and self.step_variant != "fp32":
            labels.append(f"{self.step_variant} AR steps ({VARIANT_NOTES[self.step_variant]})")
        if labels:  # the summary and check-fixture say so instead of claiming exactness
            self.exact = False
            self.approximation = "ONNX " + "; ".join(labels)
        self._past: list | StepCache | None = None
        self._cached = 0

    def _session(self, path: Path, provider: str):
        import onnxruntime as ort

        try:
            return ort.InferenceSession(str(path), self._opts, providers=_providers(provider))
        except Exception as err:  # onnxruntime raises its own untyped exceptions for a corrupt file
            raise BadInput(f"onnxruntime cannot load the graph ({str(err).splitlines()[0][:200]})", path) from None

    def _open_step(self, folder: Path, config: SessionConfig) -> StepRunner | None:
        """The AR step graph's runner: required when the variant names a pair, used when present otherwise
        (folders exported before it existed step on the backbone). CPU only: on CUDA the backbone's cache
        already stays on the device."""
        paired = self.step_variant != self.variant
        if self.on_cuda or (not paired and not (folder / graphs.step_file(self.variant)).is_file()):
            if paired and self.on_cuda:
                raise BadInput(f"variant {config.variant!r} pairs an AR step graph, which runs on the CPU provider")
            return None
        path = variant_file(folder, self.step_variant, step=True)
        session = self._session(path, "cpu")
        got_in = [i.name for i in session.get_inputs()]
        got_out = [o.name for o in session.get_outputs()]
        spec = graphs.step_spec(self.n_layers, self.kv_heads, self.head_dim, self.layout.hidden_size)
        if got_in != spec.input_names or got_out != spec.output_names:
            raise BadInput("graph inputs/outputs do not match the AR step spec", path)
        self._check_origin(session, path)
        return StepRunner(session, self.n_layers, self.layout.hidden_size)

    def _check_interface(self) -> None:
        ins = {i.name: i for i in self.session.get_inputs()}
        kv = ins.get(graphs.past_name(0, "key"))
        if kv is None or "inputs_embeds" not in ins:
            raise BadInput("graph inputs are not the valle-export backbone interface", self.path)
        self.n_layers = sum(1 for n in ins if n.endswith(".key"))
        self.kv_heads, self.head_dim = int(kv.shape[1]), int(kv.shape[3])
        spec = graphs.backbone_spec(self.n_layers, self.kv_heads, self.head_dim, self.layout.hidden_size)
        got_in = [i.name for i in self.session.get_inputs()]
        got_out = [o.name for o in self.session.get_outputs()]
        if got_in != spec.input_names or got_out != spec.output_names:
            raise BadInput("graph inputs/outputs do not match the backbone spec", self.path)

    def _check_origin(self, session, path: Path) -> None:
        """The graph must come from the same export as the folder's layout and weights: a backbone copied
        in from another model would otherwise run (same interface) and speak with the wrong weights."""
        meta = session.get_modelmeta().custom_metadata_map
        embeds = next(i for i in session.get_inputs() if i.name == "inputs_embeds")
        if embeds.shape[2] != self.layout.hidden_size:
            raise BadInput(f"graph hidden size {embeds.shape[2]} != {self.layout.hidden_size} of "
                           f"{names.LAYOUT_FILE}: the graph comes from another model", path)
        if graphs.META_LAYOUT in meta and Layout.from_json(meta[graphs.META_LAYOUT], str(path)) != self.layout:
            raise BadInput(f"graph's layout differs from {names.LAYOUT_FILE}: the graph comes from another "
                           "model", path)
        graph_print, weights_print = meta.get(graphs.META_WEIGHTS_FINGERPRINT), self.weights.fingerprint
        if graph_print and weights_print and graph_print != weights_print:
            raise BadInput(f"graph and {graphs.WEIGHTS_FILE} come from different exports (weights fingerprint "
                           "differs): the graph comes from another model", path)

    # --- the transformer ---------------------------------------------------------------------------------
    def _empty_past(self) -> list[np.ndarray]:
        z = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        return [z] * (2 * self.n_layers)

    def hidden(self, rows: np.ndarray, positions: np.ndarray, causal: bool, past: list | None = None):
        """(final-norm hidden [n, d], present key/values) for rows appended after `past`."""
        past = past if past is not None else self._empty_past()
        past_len = self._past_len(past)
        feeds = {
            "inputs_embeds": self.weights.embed(rows)[None],
            "attention_mask": seq.additive_mask(causal, len(rows), past_len),
            "position_ids": np.asarray(positions, dtype=np.int64)[None],
        }
        if self.on_cuda:
            return self._run_bound(feeds, past)
        feeds.update({graphs.past_name(i // 2, ("key", "value")[i % 2]): p for i, p in enumerate(past)})
        out = self.session.run(None, feeds)
        return out[0][0], out[1:]

    def _past_len(self, past: list) -> int:
        p = past[0]
        return int(p.shape()[2] if callable(getattr(p, "shape", None)) else p.shape[2])

    def _run_bound(self, feeds: dict, past: list):
        """CUDA: inputs copied once, the cache bound as device OrtValues in and out (never leaves the GPU)."""
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for i, p in enumerate(past):
            name = graphs.past_name(i // 2, ("key", "value")[i % 2])
            if isinstance(p, np.ndarray):
                p = ort.OrtValue.ortvalue_from_numpy(p, "cuda", 0)
            binding.bind_ortvalue_input(name, p)
        binding.bind_output("last_hidden_state", "cpu")
        for i in range(2 * self.n_layers):
            binding.bind_output(graphs.present_name(i // 2, ("key", "value")[i % 2]), "cuda", 0)
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return outs[0].numpy()[0], list(outs[1:])

    # --- several sequences per call (the graph's batch axis) -------------------------------------------
    def empty_cache(self, rows: int) -> BatchCache:
        return BatchCache.empty(rows, self.n_layers, self.kv_heads, self.head_dim)

    def batch_hidden(self, queries: list[tuple[np.ndarray, np.ndarray, bool]],
                     cache: BatchCache | StepCache | None = None) -> tuple[list[np.ndarray], BatchCache | StepCache]:
        """Final-norm hidden [n_r, d] of each row's new positions `(rows, positions, causal)` placed after row
        r of `cache` (None: no past), and the cache with them added. One call for every row; each row's result
        equals its unbatched run (padding is masked: `runtimes.batch_cache`). Cached steps of one position per
        row go to the step graph where the folder has one: the cache then comes back as a `StepCache`, which
        later calls advance in place (the returned cache is the one passed in; a BatchCache is never changed)."""
        cache = cache if cache is not None else self.empty_cache(len(queries))
        if cache.rows != len(queries):
            raise ValueError(f"{len(queries)} queries for a cache of {cache.rows} rows")
        if self.step_runner is not None and _has_past(cache) and all(len(r) == 1 and c for r, _, c in queries):
            return self._batch_step(queries, cache)
        if isinstance(cache, StepCache):
            cache = cache.as_batch_cache()
        lengths = [len(r) for r, _, _ in queries]
        q = max(lengths)
        embeds = np.zeros((len(queries), q, self.layout.hidden_size), dtype=np.float32)
        positions = np.zeros((len(queries), q), dtype=np.int64)
        for b, (rows, pos, _) in enumerate(queries):
            embeds[b, :len(rows)] = self.weights.embed(rows)
            positions[b, :len(rows)] = pos
        mask, new_valid = batch_mask(cache.valid, lengths, [c for _, _, c in queries])
        feeds = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions}
        feeds.update({graphs.past_name(i // 2, ("key", "value")[i % 2]): p for i, p in enumerate(cache.kv)})
        out = self.session.run(None, feeds)
        hidden = [out[0][b, :n] for b, n in enumerate(lengths)]
        return hidden, BatchCache(out[1:], np.concatenate([cache.valid, new_valid], axis=1))

    def _batch_step(self, queries: list[tuple[np.ndarray, np.ndarray, bool]], cache: BatchCache | StepCache
                    ) -> tuple[list[np.ndarray], StepCache]:
        """One new position per row on the step graph: the rows' caches move into step buffers once (a padded
        batch cache is converted on the first step after a prefill), then every step writes in place."""
        if isinstance(cache, BatchCache):
            cache = StepCache.from_batch_cache(cache)
        embeds = np.concatenate([self.weights.embed(rows) for rows, _, _ in queries])
        positions = np.array([int(pos[0]) for _, pos, _ in queries], dtype=np.int64)
        hidden = self.step_runner.step(cache, embeds, positions)
        return [hidden[b:b + 1] for b in range(len(queries))], cache

    def batch_logits(self, specs: list[seq.PassSpec]) -> list[np.ndarray]:
        """Full passes (no cache) of several specs in one call: float32 [spec.n_outputs, head rows] each."""
        for spec in specs:
            self._check_pass(spec)
        hidden, _ = self.batch_hidden([(s.rows, s.positions, s.causal) for s in specs])
        return [self.head_logits(h[s.out_start:], s.head) for h, s in zip(hidden, specs)]

    # --- pass plumbing hooks (valle_export.backend_base) -------------------------------------------------
    def _full_hidden(self, spec: seq.PassSpec) -> np.ndarray:
        return self.hidden(spec.rows, spec.positions, spec.causal)[0]

    def _append_hidden(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if self.step_runner is not None and len(rows) == 1:  # a cached AR step: in place on the step graph
            if not isinstance(self._past, StepCache):
                self._past = StepCache.from_past(self._past if self._past is not None else self._empty_past())
            return self.step_runner.step(self._past, self.weights.embed(rows), positions)
        if isinstance(self._past, StepCache):
            self._past = self._past.as_past()
        hidden, self._past = self.hidden(rows, positions, True, self._past)
        return hidden

    def cache_state(self) -> tuple:
        """The KV cache as an opaque value: a second sequence (the null input of AR guidance) keeps its own."""
        return self._past, self._cached

    def set_cache_state(self, state: tuple) -> None:
        self._past, self._cached = state

    def _reset_cache(self) -> None:
        self._past = None

    def head_logits(self, hidden: np.ndarray, head: str) -> np.ndarray:
        return self.weights.head_logits(hidden, self.layout, head)
