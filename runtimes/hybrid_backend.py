"""Two backends as one: cached causal passes (AR steps, len digits) on one, full passes (NAR levels, NAR-len
demasking) on the other.

Why: on two CPU cores the two kinds of pass have different bottlenecks. An AR step reads every weight for one
position (memory-bound: a 4-bit GGUF on ggml reads the fewest bytes and keeps its KV cache in place), while a
NAR pass multiplies hundreds of positions (compute-bound: onnxruntime's GEMMs beat ggml's by 2-3x). A model
folder holding both a GGUF and an ONNX export runs each pass where it is fastest (`--backend auto`,
`runtimes.open`). Both halves must come from the same checkpoint: their layouts must be equal.
"""
from __future__ import annotations

import numpy as np

from valle_export import exactness
from valle_export.errors import BadInput
from valle_export.sequence import PassSpec


class HybridBackend:
    """`prefill` / `extend` (and the cache state) go to `ar`; `logits` / `batch_logits` go to `nar`."""

    name = "hybrid"

    def __init__(self, ar, nar):
        if ar.layout != nar.layout:
            raise BadInput(f"the {ar.name} and {nar.name} models in this folder have different layouts: they were "
                           "exported from different checkpoints")
        self.ar, self.nar, self.layout = ar, nar, ar.layout
        self.name = f"{ar.name}+{nar.name}"
        parts = [b for b in (ar, nar) if not getattr(b, "exact", True)]
        self.exact = not parts
        self.approximation = "; ".join(f"{b.name}: {b.approximation}" for b in parts)
        ar_v, nar_v = getattr(ar, "verdicts", {}), getattr(nar, "verdicts", {})
        self.verdicts = {**{k: v for k, v in nar_v.items() if k in (exactness.PASS_NAR, exactness.PASS_NAR_LEN)},
                         **{k: v for k, v in ar_v.items() if k in (exactness.PASS_AR, exactness.PASS_LEN)}}
        self.refused_kinds = exactness.refused_kinds(self.verdicts)
        self.file = getattr(ar, "file", None)  # the GGUF carries the tokenizer and source config
        if hasattr(nar, "batch_logits"):
            self.batch_logits = nar.batch_logits
        if hasattr(ar, "cache_state"):
            self.cache_state, self.set_cache_state = ar.cache_state, ar.set_cache_state

    def logits(self, spec: PassSpec) -> np.ndarray:
        return self.nar.logits(spec)

    def prefill(self, spec: PassSpec) -> np.ndarray:
        return self.ar.prefill(spec)

    def extend(self, spec: PassSpec) -> np.ndarray:
        return self.ar.extend(spec)

    def close(self) -> None:
        for b in (self.ar, self.nar):
            b.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
