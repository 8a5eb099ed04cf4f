"""The pass plumbing every backend shares, written once: a full pass (`logits`), a causal pass that starts the
KV cache (`prefill`) and one that feeds only the positions added since (`extend`), with the rule that a cache
only serves causal passes. A backend supplies two hooks (the transformer on a full pass, and on appended causal
positions) and `head_logits`; the torch reference, onnxruntime, llama.cpp and ggml all build on it.

Also the labels every backend carries (`exact`, `approximation`, `verdicts`, `refused_kinds`) with the
defaults of an exact backend, and `close` / context-manager support. Imports: sequence, numpy.
"""
from __future__ import annotations

import numpy as np

from .sequence import PassSpec


class CachedPassBackend:
    """Subclasses implement `_full_hidden`, `_append_hidden`, `_reset_cache` and `head_logits`."""

    name = "backend"
    exact = True
    approximation = ""
    verdicts: dict = {}
    refused_kinds: frozenset | set = frozenset()
    _cached = 0  # positions of the current causal pass already in the cache

    # --- hooks --------------------------------------------------------------------------------------------
    def _full_hidden(self, spec: PassSpec) -> np.ndarray:
        """Final-norm hidden states [spec.length, d] of a whole pass (no cache kept)."""
        raise NotImplementedError

    def _append_hidden(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Causal: hidden states of `rows` placed after the `self._cached` cached positions (added to the cache)."""
        raise NotImplementedError

    def _reset_cache(self) -> None:
        raise NotImplementedError

    def head_logits(self, hidden: np.ndarray, head: str) -> np.ndarray:
        raise NotImplementedError

    def _check_pass(self, spec: PassSpec) -> None:
        """Raise `RefusedPass` for a pass this backend cannot compute (default: every pass runs)."""

    # --- pass API -----------------------------------------------------------------------------------------
    def logits(self, spec: PassSpec) -> np.ndarray:
        """Full pass, no cache: float32 [spec.n_outputs, head rows]."""
        self._check_pass(spec)
        return self.head_logits(self._full_hidden(spec)[spec.out_start:], spec.head)

    def pass_hidden(self, spec: PassSpec) -> np.ndarray:
        """Full pass, no head: final-norm hidden states [spec.n_outputs, d] (what the original's stt returns at
        this commit, where its pass names no head)."""
        self._check_pass(spec)
        return np.asarray(self._full_hidden(spec)[spec.out_start:], dtype=np.float32)

    def prefill(self, spec: PassSpec) -> np.ndarray:
        """Causal pass that (re)starts the KV cache: float32 logits [head rows] of the last position."""
        self._reset_cache()
        self._cached = 0
        return self.extend(spec)

    def extend(self, spec: PassSpec) -> np.ndarray:
        """Feed the positions of `spec` beyond the cached ones: float32 logits [head rows] of the last."""
        if not spec.causal:
            raise ValueError("a KV cache only serves causal passes")
        self._check_pass(spec)
        new = slice(self._cached, spec.length)
        hidden = self._append_hidden(spec.rows[new], spec.positions[new])
        self._cached = spec.length
        return self.head_logits(hidden[-1:], spec.head)[0]

    # --- lifetime -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Free native resources (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
