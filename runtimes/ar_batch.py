"""AR level 0 of many sentences at once: one backbone call per step for every active row (continuous
batching), each row deciding its tokens exactly as `pipeline.generate_ar` does alone.

Why a separate stepper rather than a batched `generate_ar`: rows join and leave between steps (a server
admits new sentences every iteration and retires finished ones at once), so the loop belongs to the caller
(`runtimes.engine`) and this module keeps only the per-row state and the one-call step. A row under
classifier-free guidance has two streams (conditional and null), each a row of the shared cache.
Imports: pipeline, samplers, sequence, batch_cache, numpy.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from valle_export import names, sequence as seq

from .batch_cache import BatchCache
from .pipeline import Conditioning, Guidance, cfg_logits
from .samplers import GREEDY, SamplerSettings, sample


@dataclasses.dataclass(eq=False)
class ArRow:
    """One sentence's level-0 generation: its streams' specs, the logits rows received so far (kept only
    under guidance, whose rescale needs the whole block) and the codes. `done` once it stopped."""

    cond: Conditioning
    max_frames: int
    sampler: SamplerSettings = GREEDY
    rng: np.random.Generator | None = None
    guidance: Guidance = Guidance()
    tag: object = None  # the caller's handle (the engine's sentence)
    codes: list[int] = dataclasses.field(default_factory=list)
    specs: list[seq.PassSpec] = dataclasses.field(default_factory=list)
    history: list[list[np.ndarray]] = dataclasses.field(default_factory=list)
    done: bool = False
    n_prefix: int = 0

    def start_specs(self, layout) -> list[seq.PassSpec]:
        self.codes = [int(c) for c in self.cond.prefix_codes]
        self.n_prefix = len(self.codes)
        self.specs = [seq.ar_pass(layout, self.cond.level0_phn, self.cond.lang, self.cond.prompt, self.codes)]
        if self.guidance.on:
            self.specs.append(seq.ar_pass(layout, seq.null_phonemes(layout), self.cond.lang, None, self.codes))
        self.history = [[] for _ in self.specs]
        return self.specs

    @property
    def streams(self) -> int:
        return 1 + int(self.guidance.on)

    @property
    def result(self) -> np.ndarray:
        return np.array(self.codes[self.n_prefix:], dtype=np.int64)

    def receive(self, logits: list[np.ndarray], layout) -> None:
        """Logits rows [n, V] of each stream (the last row predicts the next code): pick the next code as
        `generate_ar` does, then either stop or extend every stream's spec with it."""
        for h, rows in zip(self.history, logits):
            h.append(rows if self.guidance.on else rows[-1:])
        last = self.history[0][-1][-1]
        if self.guidance.on:
            block = cfg_logits(np.concatenate(self.history[0]), np.concatenate(self.history[1]),
                               self.guidance.strength, self.guidance.rescale)
            last = block[-1]
        else:
            self.history[0].clear()
        token = int(sample(last, self.sampler, self.rng, np.array(self.codes, dtype=np.int64), layout.stop_token))
        if token == layout.stop_token:
            self.done = True
            return
        self.codes.append(token)
        if len(self.codes) - self.n_prefix >= self.max_frames:
            self.done = True
            return
        self.specs = [seq.extend(layout, s, names.HEAD_AR, [token]) for s in self.specs]


class ArBatch:
    """Rows stepping together on a backend with `batch_hidden` (one KV cache row per stream)."""

    def __init__(self, backend):
        self.backend, self.layout = backend, backend.layout
        self.rows: list[ArRow] = []
        # the backend's cache of every stream: a BatchCache, or a cache of its own with the same rows / take /
        # joined / nbytes (ONNX's StepCache once rows step on its step graph; typed by duck, not imported here)
        self.cache: BatchCache | object | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def streams(self) -> int:
        return sum(r.streams for r in self.rows)

    def cache_bytes(self) -> int:
        return self.cache.nbytes() if self.cache is not None else 0

    def admit(self, rows: list[ArRow]) -> list[ArRow]:
        """Prefill new rows together (one call), add them to the batch; returns the rows already done."""
        if not rows:
            return []
        queries, owners = [], []
        for row in rows:
            for spec in row.start_specs(self.layout):
                queries.append((spec.rows, spec.positions, True))
                owners.append(row)
        hidden, cache = self.backend.batch_hidden(queries)
        self._deliver(rows, owners, hidden, all_rows=True)
        self.cache = cache if self.cache is None else self.cache.joined(cache)
        self.rows += rows
        return self._retire()

    def step(self) -> list[ArRow]:
        """One backbone call feeding every stream its latest code; returns the rows that finished."""
        if not self.rows:
            return []
        queries, owners = [], []
        for row in self.rows:
            for spec in row.specs:
                queries.append((spec.rows[-1:], spec.positions[-1:], True))
                owners.append(row)
        hidden, self.cache = self.backend.batch_hidden(queries, self.cache)
        self._deliver(self.rows, owners, hidden, all_rows=False)
        return self._retire()

    def remove(self, keep) -> list[ArRow]:
        """Drop the rows for which `keep(row)` is False (cancelled); returns them."""
        dropped = [r for r in self.rows if not keep(r)]
        for r in dropped:
            r.done = True
        self._retire()
        return dropped

    def _deliver(self, rows: list[ArRow], owners: list[ArRow], hidden: list[np.ndarray], all_rows: bool) -> None:
        by_row: dict[int, list[np.ndarray]] = {id(r): [] for r in rows}
        for row, h, spec in zip(owners, hidden, [s for r in rows for s in r.specs]):
            rows_h = h[spec.out_start:] if all_rows and row.guidance.on else h[-1:]
            by_row[id(row)].append(self.backend.head_logits(rows_h, names.HEAD_AR))
        for row in rows:
            row.receive(by_row[id(row)], self.layout)

    def _retire(self) -> list[ArRow]:
        finished = [r for r in self.rows if r.done]
        if finished:
            keep_streams, kept = [], []
            i = 0
            for row in self.rows:
                if not row.done:
                    keep_streams += list(range(i, i + row.streams))
                    kept.append(row)
                i += row.streams
            self.rows = kept
            self.cache = self.cache.take(keep_streams) if kept else None
        return finished
