"""Run an exported file against the reference at lengths other than the export example, before an export
command reports success: a causal prefill, cached single steps, and a bidirectional pass."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from reference_model.model import UniformValleModel
from valle_export import contracts

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
    def ok(self) -> bool:
        """NaN-safe: a NaN error fails (`nan <= bound` is false; `nan > bound` would also be false)."""
        return contracts.within(self.worst, HIDDEN_REL_BOUND[self.dtype])

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v:.2e}" for k, v in self.errors.items())
        return f"{self.dtype} hidden-state relative error: {parts} (bound {HIDDEN_REL_BOUND[self.dtype]:g})"


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
    _, past = backend.hidden(rows[:10], pos[:10], True)
    steps = []
    for i in range(10, 13):
        h, past = backend.hidden(rows[i:i + 1], pos[i:i + 1], True, past)
        steps.append(h[0])
    errors["cached steps"] = contracts.rel_error(np.stack(steps), want[10:])
    return VerifyReport(variant, errors)
