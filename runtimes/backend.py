"""The `Backend` protocol every runtime implements (torch reference, onnxruntime, llama.cpp, ggml).

A backend computes logits of the head named by a `PassSpec` at its output positions. Causal passes can
keep a KV cache: `prefill` starts it, `extend` feeds only the positions added to the spec since the last
call. Input assembly (rows, positions, masks) is the same for all backends (`valle_export.sequence`).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from valle_export.layout import Layout
from valle_export.sequence import PassSpec


class Backend(Protocol):
    layout: Layout
    name: str
    exact: bool  # False where the backend is known to approximate the reference (stated with its error)

    def logits(self, spec: PassSpec) -> np.ndarray:
        """Full pass, no cache: float32 [spec.n_outputs, head rows]."""

    def pass_hidden(self, spec: PassSpec) -> np.ndarray:
        """Full pass, no head: final-norm hidden states [spec.n_outputs, d]."""

    def prefill(self, spec: PassSpec) -> np.ndarray:
        """Causal pass that (re)starts the KV cache: float32 logits [head rows] of the last position."""

    def extend(self, spec: PassSpec) -> np.ndarray:
        """Feed the positions of `spec` beyond the cached ones: float32 logits [head rows] of the last."""
