"""`TorchBackend`: the reference model behind the runtimes' `Backend` protocol (numpy in, numpy out), so
the same pipeline code runs on the reference and on every exported runtime."""
from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache

from valle_export.backend_base import CachedPassBackend
from valle_export.sequence import PassSpec

from .model import UniformValleModel


class TorchBackend(CachedPassBackend):
    name = "torch"

    def __init__(self, model: UniformValleModel):
        self.model = model
        self.layout = model.layout
        self._cache: DynamicCache | None = None

    @torch.no_grad()
    def logits(self, spec: PassSpec) -> np.ndarray:
        return self.model.pass_logits(spec).numpy()  # the reference's own full pass (heads included)

    def cache_state(self) -> tuple:
        """The KV cache as an opaque value (a fresh DynamicCache per prefill, so two sequences never share)."""
        return self._cache, self._cached

    def set_cache_state(self, state: tuple) -> None:
        self._cache, self._cached = state

    @torch.no_grad()
    def _full_hidden(self, spec: PassSpec) -> np.ndarray:
        return self.model.hidden(self.model.embed(spec.rows), spec.positions, spec.causal).numpy()

    def _reset_cache(self) -> None:
        self._cache = DynamicCache(config=self.model.llama.config)

    @torch.no_grad()
    def _append_hidden(self, rows: np.ndarray, positions: np.ndarray):
        if self._cache is None:
            raise RuntimeError("extend() before prefill()")
        return self.model.hidden(self.model.embed(rows), positions, True, self._cache)

    @torch.no_grad()
    def head_logits(self, hidden, head: str) -> np.ndarray:
        return self.model.head_logits(hidden, head).numpy()
