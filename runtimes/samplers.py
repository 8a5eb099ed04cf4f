"""Pure numpy token samplers taking an explicit `np.random.Generator`, identical on every backend.

Greedy when `temperature == 0`. Filters follow the original (vall_e/samplers.py): top-n-sigma keeps
logits >= max - top_no * std (unbiased std over the row), then top-k, top-p, min-p.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    top_no: float = 0.0
    repetition_penalty: float = 1.0  # the original divides the logit of every earlier token by this, per occurrence
    repetition_decay: float = 0.0  # ... times distance ** decay
    length_penalty: float = 0.0  # stop logit divided by length ** factor (> 0: longer outputs)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


GREEDY = SamplerSettings(temperature=0.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - np.max(logits, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_n_sigma(logits: np.ndarray, top_no: float) -> np.ndarray:
    """Mask (-inf) logits below row max - top_no * row std; rows [.., V]. No-op when top_no <= 0."""
    if top_no <= 0:
        return logits
    std = logits.std(axis=-1, ddof=1, keepdims=True)
    keep = logits >= logits.max(axis=-1, keepdims=True) - top_no * std
    return np.where(keep, logits, -np.inf).astype(logits.dtype)


def _filter(logits: np.ndarray, s: SamplerSettings) -> np.ndarray:
    logits = top_n_sigma(logits, s.top_no)
    if s.top_k > 0 and s.top_k < logits.shape[-1]:
        kth = np.sort(logits, axis=-1)[..., -s.top_k][..., None]
        logits = np.where(logits >= kth, logits, -np.inf)
    if s.top_p < 1.0:
        order = np.argsort(-logits, axis=-1, kind="stable")
        probs = np.take_along_axis(softmax(logits), order, axis=-1)
        drop_sorted = np.cumsum(probs, axis=-1) - probs > s.top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        logits = np.where(drop, -np.inf, logits)
    if s.min_p > 0.0:
        probs = softmax(logits)
        logits = np.where(probs >= s.min_p * probs.max(axis=-1, keepdims=True), logits, -np.inf)
    return logits


def penalize(logits: np.ndarray, s: SamplerSettings, history: np.ndarray | None = None,
             stop_token: int | None = None) -> np.ndarray:
    """The original's repetition and length penalties on one AR row [V] (a copy)."""
    logits = np.array(logits, dtype=np.float32)
    if history is not None and len(history) and s.repetition_penalty != 1.0:
        n = len(history)
        for i, token in enumerate(history):
            logits[token] /= s.repetition_penalty * ((n - i) ** s.repetition_decay)
    if stop_token is not None and s.length_penalty != 0.0 and history is not None and len(history):
        logits[stop_token] /= len(history) ** s.length_penalty
    return logits


def sample(logits: np.ndarray, settings: SamplerSettings, rng: np.random.Generator | None = None) -> np.ndarray:
    """One token per row of `logits` [.., V] (int64 [..])."""
    logits = np.asarray(logits, dtype=np.float32)
    if settings.greedy:
        return np.argmax(top_n_sigma(logits, settings.top_no), axis=-1).astype(np.int64)
    if rng is None:
        raise ValueError("sampling with temperature > 0 needs an explicit np.random.Generator")
    probs = softmax(_filter(logits / settings.temperature, settings).astype(np.float64))
    flat = probs.reshape(-1, probs.shape[-1])
    u = rng.random(flat.shape[0])
    picks = np.array([min(int(np.searchsorted(np.cumsum(p), x * p.sum())), len(p) - 1) for p, x in zip(flat, u)])
    return picks.reshape(probs.shape[:-1]).astype(np.int64)
