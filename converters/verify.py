"""Run an exported folder against the reference at lengths other than the export example, before an export
command reports success: a causal prefill, cached single steps (on the AR step graph where the folder has
one: after a prefill, and again after the buffers had to grow), and a bidirectional pass."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from reference_model.model import UniformValleModel
from valle_export import contracts
from valle_export.backend_options import split_variant

# Relative bounds on final-norm hidden states per exported dtype (fp32 measured ~1e-6; fp16 ~1e-3;
# dynamic int8 ~5e-2 on random weights, design section 5): named in valle_export.contracts.
HIDDEN_REL_BOUND = contracts.ONNX_HIDDEN_REL


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    dtype: str
    errors: dict[str, float]

    @property
    def worst(self) -> float:
        """The largest error, NaN if any is NaN (Python's max() would skip a NaN after the first value)."""
        return float(np.max(list(self.errors.values())))

    @property
    def bound(self) -> float:
        """The looser bound of the variant's two graphs (a pair's steps run on a cache its backbone made)."""
        return max(HIDDEN_REL_BOUND[v] for v in split_variant(self.dtype))

    @property
    def ok(self) -> bool:
        """NaN-safe: a NaN error fails (`nan <= bound` is false; `nan > bound` would also be false)."""
        return contracts.within(self.worst, self.bound)

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v:.2e}" for k, v in self.errors.items())
        return f"{self.dtype} hidden-state relative error: {parts} (bound {self.bound:g})"


def verify_backbone(model: UniformValleModel, folder: Path, variant: str) -> VerifyReport:
    from runtimes.onnx_backend import OnnxBackend, SessionConfig

    backend = OnnxBackend(folder, SessionConfig(provider="cpu", variant=variant))
    rng = np.random.default_rng(0)
    rows = rng.integers(0, model.layout.vocab_size, (13, 2))
    pos = np.concatenate([np.arange(9), np.arange(4)])
    errors = {}
    for causal in (True, False):
        want = model.hidden(model.embed(rows), pos, causal).numpy()
        got, _ = backend.hidden(rows, pos, causal)
        errors["causal" if causal else "bidirectional"] = contracts.rel_error(got, want)
    want = model.hidden(model.embed(rows), pos, True).numpy()
    errors["cached steps"] = contracts.rel_error(_cached_steps(backend, rows, pos, 10), want[10:])
    if backend.step_runner is not None:  # steps after the buffers grew (capacity 1 forces a regrowth per step)
        errors["cached steps, regrown"] = contracts.rel_error(_cached_steps(backend, rows, pos, 10, 1), want[10:])
    return VerifyReport(variant, errors)


def _cached_steps(backend, rows: np.ndarray, pos: np.ndarray, start: int, reserve: int | None = None):
    """Hidden states of positions start.. fed one at a time after a prefill of the first `start`, as the
    backend's cached AR steps run: on its step graph where it has one (`reserve` positions of room after the
    prefill: 1 forces regrowths), else on the backbone with the growing past."""
    from runtimes.onnx_step import FIRST_FREE, StepCache

    _, past = backend.hidden(rows[:start], pos[:start], True)
    steps = range(start, len(rows))
    if backend.step_runner is None:
        out = []
        for i in steps:
            hidden, past = backend.hidden(rows[i:i + 1], pos[i:i + 1], True, past)
            out.append(hidden)
        return np.concatenate(out)
    cache = StepCache.from_past(past, FIRST_FREE if reserve is None else reserve)
    return np.concatenate([backend.step_runner.step(cache, backend.weights.embed(rows[i:i + 1]), pos[i:i + 1])
                           for i in steps])
