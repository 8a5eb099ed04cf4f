"""Several sequences in one backbone call: a padded KV cache with a validity mask per row, and the additive
masks that make padding invisible.

Why a validity mask rather than one length per row: rows join with different cached lengths and new queries
of different lengths, so pad columns end up both after a short row's cache (a gap) and inside a prefill of
several rows; a per-row, per-column flag covers every case with one rule. Rows are start-aligned (row r's
first position sits at column 0, as it does when the row runs alone), so reductions over the keys see the
valid values in the same order as the unbatched run. Pad keys get -inf (exactly zero weight); a pad query
attends to itself only, so no query row is fully masked (that would give NaN). Imports: numpy.
"""
from __future__ import annotations

import dataclasses

import numpy as np

NEG_INF = np.float32(-np.inf)


@dataclasses.dataclass
class BatchCache:
    """KV of `rows` sequences: `kv` = 2 x layers arrays [rows, heads, columns, head_dim] (key, value per
    layer, in graph order), `valid` bool [rows, columns] (False = padding)."""

    kv: list[np.ndarray]
    valid: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.valid.shape[0])

    @property
    def columns(self) -> int:
        return int(self.valid.shape[1])

    def lengths(self) -> np.ndarray:
        return self.valid.sum(axis=1)

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.kv))

    def take(self, index) -> "BatchCache":
        """The rows at `index` (in that order), then compacted: retiring a long row frees its columns."""
        index = np.asarray(index, dtype=np.int64)
        return BatchCache([a[index] for a in self.kv], self.valid[index]).compact()

    def compact(self) -> "BatchCache":
        """Drop the columns that are padding in every row (a copy only when there are any)."""
        used = self.valid.any(axis=0)
        if used.all():
            return self
        keep = np.flatnonzero(used)
        return BatchCache([a[:, :, keep] for a in self.kv], self.valid[:, keep])

    def joined(self, other: "BatchCache") -> "BatchCache":
        """This cache's rows, then `other`'s (new rows admitted after their prefill)."""
        return BatchCache.stack([self, other])

    @classmethod
    def empty(cls, rows: int, layers: int, heads: int, head_dim: int, dtype=np.float32) -> "BatchCache":
        z = np.zeros((rows, heads, 0, head_dim), dtype=dtype)
        return cls([z] * (2 * layers), np.zeros((rows, 0), dtype=bool))

    @classmethod
    def stack(cls, caches: list["BatchCache"]) -> "BatchCache":
        """Rows of several caches in one, each padded at the end to the widest (start-aligned)."""
        caches = [c for c in caches if c.rows]
        if len(caches) == 1:
            return caches[0]
        width = max(c.columns for c in caches)

        def pad(a: np.ndarray, extra: int, axis: int) -> np.ndarray:
            if not extra:
                return a
            widths = [(0, 0)] * a.ndim
            widths[axis] = (0, extra)
            return np.pad(a, widths)

        kv = [np.concatenate([pad(c.kv[i], width - c.columns, 2) for c in caches]) for i in range(len(caches[0].kv))]
        valid = np.concatenate([pad(c.valid, width - c.columns, 1) for c in caches])
        return cls(kv, valid)


def batch_mask(valid_past: np.ndarray, lengths: list[int], causal: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(additive mask [B, 1, Q, P + Q], validity of the new columns [B, Q]) for `lengths[r]` new queries of
    row r after its cached columns `valid_past` [B, P]; Q = max(lengths). Query i of row r sees the row's
    valid past and its new keys k < lengths[r] (k <= i when causal); a pad query sees only itself."""
    rows, past = valid_past.shape
    q = max(lengths) if lengths else 0
    n = np.asarray(lengths, dtype=np.int64)[:, None, None]
    i = np.arange(q)[None, :, None]
    k = np.arange(q)[None, None, :]
    is_causal = np.asarray(causal, dtype=bool)[:, None, None]
    real_query = i < n
    new_allowed = np.where(real_query, (k < n) & (~is_causal | (k <= i)), k == i)
    past_allowed = np.broadcast_to(valid_past[:, None, :], (rows, q, past)) & real_query
    allowed = np.concatenate([past_allowed, new_allowed], axis=2)
    mask = np.where(allowed, np.float32(0.0), NEG_INF).astype(np.float32)[:, None]
    return mask, np.arange(q)[None, :] < np.asarray(lengths, dtype=np.int64)[:, None]
