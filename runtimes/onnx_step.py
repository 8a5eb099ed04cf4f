"""Cached AR steps on the step graph (`converters.onnx_step`): a KV cache kept in preallocated buffers that
onnxruntime updates in place, so a step reads the cache once and copies nothing.

The backbone's cached step concatenates past and new keys into a fresh present tensor every step (at 800
positions that copy costs as much as a 4-bit weight read); here each layer's key and value live in one
buffer [rows, heads, capacity, head_dim] bound as both the step graph's past input and present output, row
r's new position written at its own length (GroupQueryAttention's right-padded layout: row r holds its
positions at indices 0..length-1). One sequence is one row; the engine's continuous batch is many rows of
different lengths stepping in one call. When the longest row is full, capacity grows by a quarter (at
least BATCH_FREE positions; one copy), not doubling, so a batch never holds much more than the engine's KV
budget (every row at the longest row's length); rows join and leave by copying (an event, not a step).
Imports: numpy, onnxruntime, graphs, batch_cache.
"""
from __future__ import annotations

import numpy as np

from valle_export import graphs

from .batch_cache import BatchCache

FIRST_FREE = 1024  # positions reserved past a sequence's prefill: 13 s of frames before the first regrowth
BATCH_FREE = 256  # the same for a continuous batch, whose buffers hold every row at the longest row's size
GROWTH_DIVISOR = 4  # a full cache grows by capacity / 4 (at least BATCH_FREE): at most a quarter + 256
# positions past the longest row (doubling held up to twice), for 2 more copies on the way from 300 to 1200


class StepCache:
    """KV cache of `rows` sequences as step-graph buffers (2 x layers arrays [rows, heads, capacity,
    head_dim], key then value per layer); row r's positions at indices 0..lengths[r]-1."""

    def __init__(self, buffers: list[np.ndarray], lengths):
        self.buffers = buffers
        self.lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        self.io: _BoundIO | None = None  # the step graph's binding over these buffers (made once per shape)

    # --- construction ------------------------------------------------------------------------------------
    @staticmethod
    def _alloc(like: np.ndarray, rows: int, capacity: int) -> np.ndarray:
        return np.zeros((rows, like.shape[1], capacity, like.shape[3]), dtype=np.float32)

    @classmethod
    def _extended(cls, arrays: list[np.ndarray], capacity: int) -> list[np.ndarray]:
        """`arrays` ([rows, heads, n, head_dim]) copied to the start of new buffers of `capacity` positions."""
        out = []
        for a in arrays:
            buf = cls._alloc(a, a.shape[0], capacity)
            buf[:, :, :a.shape[2]] = a
            out.append(buf)
        return out

    @classmethod
    def from_past(cls, past: list[np.ndarray], reserve: int = FIRST_FREE) -> "StepCache":
        """One sequence from a backbone cache (`past`: [1, heads, n, head_dim] per layer and kind)."""
        n = int(past[0].shape[2])
        return cls(cls._extended(past, n + max(1, reserve)), [n])

    @classmethod
    def from_batch_cache(cls, cache: BatchCache, reserve: int | None = None) -> "StepCache":
        """The rows of a padded batch cache (valid columns anywhere) moved to the start of their buffer rows,
        with room for `reserve` more positions (default BATCH_FREE)."""
        lengths = cache.lengths()
        capacity = int(lengths.max(initial=0)) + max(1, BATCH_FREE if reserve is None else reserve)
        buffers = [cls._alloc(a, cache.rows, capacity) for a in cache.kv]
        _move_rows(cache, buffers, 0)
        return cls(buffers, lengths)

    # --- views and shape -----------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> int:
        return self.buffers[0].shape[2]

    @property
    def length(self) -> int:
        """Cached positions of a one-sequence cache."""
        if self.rows != 1:
            raise ValueError(f"a cache of {self.rows} rows has no single length")
        return int(self.lengths[0])

    def nbytes(self) -> int:
        return int(sum(b.nbytes for b in self.buffers))

    def as_past(self) -> list[np.ndarray]:
        """A one-sequence cache in the backbone's layout (views; onnxruntime copies them contiguous)."""
        return [b[:, :, :self.length] for b in self.buffers]

    def as_batch_cache(self) -> BatchCache:
        """The rows as a padded batch cache (start-aligned, padding after each shorter row)."""
        width = int(self.lengths.max(initial=0))
        valid = np.arange(width)[None, :] < self.lengths[:, None]
        return BatchCache([np.ascontiguousarray(b[:, :, :width]) for b in self.buffers], valid)

    # --- rows leaving, joining; growth -------------------------------------------------------------------
    def take(self, index) -> "StepCache":
        """The rows at `index` (in that order), in new buffers sized to the longest of them."""
        index = np.asarray(index, dtype=np.int64)
        lengths = self.lengths[index]
        capacity = min(self.capacity, int(lengths.max(initial=0)) + BATCH_FREE)
        return StepCache([np.ascontiguousarray(b[index, :, :capacity]) for b in self.buffers], lengths)

    def joined(self, other: "StepCache | BatchCache") -> "StepCache":
        """This cache's rows, then `other`'s (a backbone prefill's batch cache or another step cache)."""
        step = isinstance(other, StepCache)
        other_lengths = other.lengths if step else other.lengths()
        capacity = max(self.capacity, other.capacity if step else int(other_lengths.max(initial=0)) + BATCH_FREE)
        buffers = [self._alloc(a, self.rows + other.rows, capacity) for a in self.buffers]
        for buf, a in zip(buffers, self.buffers):
            buf[:self.rows, :, :a.shape[2]] = a
        if step:
            for buf, b in zip(buffers, other.buffers):
                buf[self.rows:, :, :b.shape[2]] = b
        else:
            _move_rows(other, buffers, self.rows)
        return StepCache(buffers, np.concatenate([self.lengths, other_lengths]))

    def _fit_next_step(self) -> None:
        """Grow the capacity (GROWTH_DIVISOR) when the longest row has no room for one more position."""
        need = int(self.lengths.max(initial=0)) + 1
        if need <= self.capacity:
            return
        grown = self.capacity + max(BATCH_FREE, self.capacity // GROWTH_DIVISOR)
        self.buffers, self.io = self._extended(self.buffers, max(need, grown)), None


def _move_rows(cache: BatchCache, buffers: list[np.ndarray], first: int) -> None:
    """Row r of a padded batch cache into buffer row first + r: its valid columns, in order, from index 0."""
    for r in range(cache.rows):
        at = 0
        for start, stop in _runs(cache.valid[r]):  # slices: a gather along the column axis is 30x slower
            for buf, a in zip(buffers, cache.kv):
                buf[first + r, :, at:at + stop - start] = a[r, :, start:stop]
            at += stop - start


def _runs(valid: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in a row's validity (a prefill, then the steps after a gap)."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], valid, [False]]).astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


class _BoundIO:
    """A step graph's IOBinding over one cache's buffers and its own small input / output arrays, all bound
    once: a step writes the inputs in place and runs (no per-step binding calls)."""

    def __init__(self, session, names: list[tuple[str, str]], cache: StepCache, hidden_size: int):
        import onnxruntime as ort

        rows = cache.rows
        self.session = session
        self.embeds = np.zeros((rows, 1, hidden_size), dtype=np.float32)
        self.positions = np.zeros((rows, 1), dtype=np.int64)
        self.seqlens = np.zeros(rows, dtype=np.int32)
        self.total = np.zeros((), dtype=np.int32)
        self.hidden = np.zeros((rows, 1, hidden_size), dtype=np.float32)
        self.binding = session.io_binding()
        # OrtValues over numpy memory: kept referenced here so the arrays outlive the binding
        self._values = [ort.OrtValue.ortvalue_from_numpy(b) for b in cache.buffers]
        for (past, present), value in zip(names, self._values):
            self.binding.bind_ortvalue_input(past, value)
            self.binding.bind_ortvalue_output(present, value)
        self._small = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in (
            ("inputs_embeds", self.embeds), ("position_ids", self.positions), ("seqlens_k", self.seqlens),
            ("total_sequence_length", self.total))}
        for name, value in self._small.items():
            self.binding.bind_ortvalue_input(name, value)
        self._out = ort.OrtValue.ortvalue_from_numpy(self.hidden)
        self.binding.bind_ortvalue_output("last_hidden_state", self._out)


class StepRunner:
    """Runs the step graph of one session on a `StepCache` (CPU)."""

    def __init__(self, session, n_layers: int, hidden_size: int):
        self.session = session
        self.hidden_size = hidden_size
        self.names = [(graphs.past_name(i // 2, ("key", "value")[i % 2]),
                       graphs.present_name(i // 2, ("key", "value")[i % 2])) for i in range(2 * n_layers)]

    def step(self, cache: StepCache, embeds: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Final-norm hidden [rows, d] of one new position per row (embedding sums `embeds` [rows, d] at
        `positions` [rows]) appended to `cache`, every row in one call."""
        cache._fit_next_step()
        io = cache.io
        if io is None or io.session is not self.session:
            io = cache.io = _BoundIO(self.session, self.names, cache, self.hidden_size)
        io.embeds[:, 0] = embeds
        io.positions[:, 0] = positions
        io.seqlens[:] = cache.lengths
        io.total[...] = int(cache.lengths.max()) + 1
        self.session.run_with_iobinding(io.binding)
        cache.lengths += 1
        return io.hidden[:, 0].copy()
