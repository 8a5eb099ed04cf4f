"""The original's sampler chain (vall_e/models/base.py `sample`, vall_e/samplers.py) in numpy, with an
explicit `np.random.Generator`, identical on every backend.

Order, as the original: repetition penalty -> length penalty (AR) -> min-p (keeps >= 32) -> top-k / top-p
-> temperature -> top-nσ -> DRY -> argmax (temperature 0) or a categorical draw. Rows are [R, V]: one row for
an AR step, one per frame for NAR passes. Deviations, only where the original is broken (README):
- top-nσ takes its std over the entries the earlier filters kept (the original's std over -inf entries is
  NaN, which masks every logit);
- the repetition penalty skips ids outside the head (NAR-len's mask token 1024 would index past a
  1024-wide head and raise there).
"""
from __future__ import annotations

import dataclasses

import numpy as np

MIN_P_KEEP = 32  # the original's min_tokens_to_keep of min-p
TOP_NO_N = 1.0  # the original calls top_no_logits_processing(logit) without n: any top_no > 0 means n = 1


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    temperature: float = 1.0  # 0 = greedy (argmax of the processed logits)
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    top_no: float = 0.0  # > 0: top-nσ filter with n = 1 (as the original)
    repetition_penalty: float = 1.0  # divides the logit of every earlier token, per occurrence
    repetition_decay: float = 0.0  # ... times distance ** decay
    length_penalty: float = 0.0  # AR stop logit divided by (length + 1) ** factor
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


GREEDY = SamplerSettings(temperature=0.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - np.max(logits, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def repetition_penalize(logits: np.ndarray, previous: np.ndarray, factor: float, decay: float = 0.0) -> np.ndarray:
    """vall_e/samplers.py reptition_penalize: logit[token] /= factor * distance ** decay for every earlier
    token. A NAR pass (one row per previous token) penalizes only the rows after the token; an AR step with
    exactly one previous token counts as such a pass too and is left alone (the original's quirk)."""
    if factor == 1.0 or previous is None or len(previous) == 0:
        return logits
    is_nar = len(previous) == logits.shape[0]
    for i, token in enumerate(np.asarray(previous).tolist()):
        if token >= logits.shape[1]:
            continue  # deviation: mask tokens (see module docstring)
        start = i + 1 if is_nar and i < logits.shape[0] else 0
        logits[start:, token] /= factor * ((len(previous) - i) ** decay)
    return logits


def length_penalize(logits: np.ndarray, length: int, factor: float, stop_token: int) -> np.ndarray:
    """The AR stop logit divided by length ** factor, with length = codes so far + 1 (the original's)."""
    if factor != 0.0:
        logits[:, stop_token] /= length ** factor
    return logits


def min_p_filter(logits: np.ndarray, min_p: float, keep: int = MIN_P_KEEP) -> np.ndarray:
    """Drop tokens whose probability is below min_p * the top probability, keeping the `keep` best."""
    if min_p <= 0.0:
        return logits
    probs = softmax(logits)
    remove = probs < min_p * probs.max(axis=-1, keepdims=True)
    order = np.argsort(-logits, axis=-1, kind="stable")
    remove_sorted = np.take_along_axis(remove, order, axis=-1)
    remove_sorted[..., :keep] = False
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, -np.inf, logits).astype(logits.dtype)


def top_k_top_p_filter(logits: np.ndarray, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Top-k (ties with the k-th kept), then nucleus: keep the smallest prefix whose mass exceeds top_p."""
    if top_k > 0:
        k = min(max(top_k, 1), logits.shape[-1])
        kth = np.sort(logits, axis=-1)[..., -k][..., None]
        logits = np.where(logits < kth, -np.inf, logits).astype(logits.dtype)
    if top_p < 1.0:
        order = np.argsort(-logits, axis=-1, kind="stable")
        cumulative = np.cumsum(softmax(np.take_along_axis(logits, order, axis=-1)), axis=-1)
        remove_sorted = np.zeros_like(cumulative, dtype=bool)
        remove_sorted[..., 1:] = cumulative[..., :-1] > top_p
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        logits = np.where(remove, -np.inf, logits).astype(logits.dtype)
    return logits


def top_n_sigma(logits: np.ndarray, n: float = TOP_NO_N) -> np.ndarray:
    """Keep logits >= row max - n * row std (unbiased, over the finite entries; see module docstring)."""
    finite = np.isfinite(logits)
    if finite.all():  # float32 like the original's torch.std
        std = logits.std(axis=-1, ddof=1, keepdims=True)
    else:
        count = finite.sum(axis=-1, keepdims=True)
        values = np.where(finite, logits, 0.0).astype(np.float64)
        mean = values.sum(axis=-1, keepdims=True) / count
        var = (np.where(finite, values - mean, 0.0) ** 2).sum(axis=-1, keepdims=True) / np.maximum(count - 1, 1)
        std = np.sqrt(var).astype(logits.dtype)
    keep = logits >= logits.max(axis=-1, keepdims=True) - n * std
    return np.where(keep, logits, -np.inf).astype(logits.dtype)


def dry_penalize(logits: np.ndarray, previous: np.ndarray, factor: float, base: float = 1.75,
                 allowed_length: int = 2) -> np.ndarray:
    """vall_e/samplers.py dry_sampling, as written there: for each token, the longest run ending at one of
    its occurrences that repeats the sequence's tail; subtract factor * base ** (run - allowed_length) from
    every row. The loop stops at the first token (in first-seen order) whose run is below allowed_length."""
    if factor == 0.0 or previous is None or len(previous) == 0:
        return logits
    prev = np.asarray(previous).tolist()
    lengths: dict[int, int] = {}
    for i, token in enumerate(prev):
        length = 1
        while length < max(allowed_length, 50):
            j = i - length
            if j < 0 or prev[j] != prev[-length - 1]:
                break
            length += 1
        lengths[token] = max(length, lengths[token]) if token in lengths else length
    for token, length in lengths.items():
        if length < allowed_length:
            break
        if token < logits.shape[1]:
            logits[:, token] -= factor * base ** (length - allowed_length)
    return logits


def process(logits: np.ndarray, s: SamplerSettings, previous: np.ndarray | None = None,
            stop_token: int | None = None) -> np.ndarray:
    """The original's chain on rows [R, V] (a float32 copy). `stop_token` marks an AR step (length penalty);
    `previous`: the codes so far (AR) or the previous level's codes, one per row (NAR)."""
    x = np.array(logits, dtype=np.float32, ndmin=2)
    if previous is not None and s.repetition_penalty != 1.0:
        x = repetition_penalize(x, previous, s.repetition_penalty, s.repetition_decay)
    if stop_token is not None and previous is not None and s.length_penalty != 0.0:
        x = length_penalize(x, len(previous) + 1, s.length_penalty, stop_token)
    x = min_p_filter(x, s.min_p)
    if s.top_k > 0 or s.top_p < 1.0:
        x = top_k_top_p_filter(x, s.top_k, s.top_p)
    if s.temperature > 0.0:
        x = (x / np.float32(s.temperature)).astype(np.float32)
    if s.top_no > 0.0:
        x = top_n_sigma(x)
    if s.dry_multiplier > 0.0 and previous is not None:
        x = dry_penalize(x, previous, s.dry_multiplier, s.dry_base, s.dry_allowed_length)
    return x


def draw(processed: np.ndarray, greedy: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """One token per row of processed logits: argmax, or a categorical draw (inverse CDF, float64)."""
    if greedy:
        return np.argmax(processed, axis=-1).astype(np.int64)
    if rng is None:
        raise ValueError("sampling with temperature > 0 needs an explicit np.random.Generator")
    probs = softmax(processed.astype(np.float64))
    flat = probs.reshape(-1, probs.shape[-1])
    u = rng.random(flat.shape[0])
    picks = [min(int(np.searchsorted(np.cumsum(p), x * p.sum())), len(p) - 1) for p, x in zip(flat, u)]
    return np.array(picks, dtype=np.int64).reshape(probs.shape[:-1])


def sample(logits: np.ndarray, settings: SamplerSettings, rng: np.random.Generator | None = None,
           previous: np.ndarray | None = None, stop_token: int | None = None) -> np.ndarray:
    """One token per row of `logits` [.., V] (int64 [..]) after the whole chain."""
    logits = np.asarray(logits, dtype=np.float32)
    processed = process(logits.reshape(-1, logits.shape[-1]), settings, previous, stop_token)
    return draw(processed, settings.greedy, rng).reshape(logits.shape[:-1])
