"""`TorchBackend`: the reference model behind the runtimes' `Backend` protocol (numpy in, numpy out), so
the same pipeline code runs on the reference and on every exported runtime."""
from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache

from valle_export.sequence import PassSpec

from .model import UniformValleModel


class TorchBackend:
    name = "torch"
    exact = True

    def __init__(self, model: UniformValleModel):
        self.model = model
        self.layout = model.layout
        self._cache: DynamicCache | None = None
        self._cached = 0

    @torch.no_grad()
    def logits(self, spec: PassSpec) -> np.ndarray:
        return self.model.pass_logits(spec).numpy()

    def cache_state(self) -> tuple:
        """The KV cache as an opaque value (a fresh DynamicCache per prefill, so two sequences never share)."""
        return self._cache, self._cached

    def set_cache_state(self, state: tuple) -> None:
        self._cache, self._cached = state

    @torch.no_grad()
    def prefill(self, spec: PassSpec) -> np.ndarray:
        self._cache = DynamicCache(config=self.model.llama.config)
        self._cached = 0
        return self.extend(spec)

    @torch.no_grad()
    def extend(self, spec: PassSpec) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("extend() before prefill()")
        if not spec.causal:
            raise ValueError("a KV cache only serves causal passes")
        new = slice(self._cached, spec.length)
        embeds = self.model.embed(spec.rows[new])
        hidden = self.model.hidden(embeds, spec.positions[new], True, self._cache)
        self._cached = spec.length
        return self.model.head_logits(hidden[-1:], spec.head)[0].numpy()
