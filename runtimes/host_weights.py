"""The flat input table and the stacked heads, held in numpy: inputs are assembled and heads applied on the
host (exact, biases included, and only the head a pass needs is computed)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from valle_export import graphs, sequence as seq
from valle_export.errors import BadInput
from valle_export.layout import Layout

from .blas_threads import one_blas_thread


# up to this many rows a head goes through einsum (no BLAS, so no BLAS workers spinning between AR steps):
# OpenBLAS computes one row (gemv) differently on one thread and on two, and a thread that does not control
# OpenBLAS's process-wide count (threadpoolctl lets one at a time) cannot choose; from 2 rows up its results
# are the same on any thread count (measured 2-750 rows)
SMALL_BATCH_ROWS = 8


def apply_head(hidden: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """[n, rows] = hidden [n, d] @ weight.T + bias in float32: a few rows (an AR step's streams) through einsum,
    more on ONE BLAS thread (`runtimes.blas_threads`: a multi-threaded BLAS call between two backend calls
    fights their spinning workers for the cores and leaves its own spinning on them: measured 3-8 % slower
    NAR levels for a 3-sentence text)."""
    hidden = hidden.astype(np.float32)
    if len(hidden) <= SMALL_BATCH_ROWS:
        return np.einsum("nd,rd->nr", hidden, weight, optimize=False) + bias
    with one_blas_thread():
        return hidden @ weight.T + bias


@dataclasses.dataclass
class HostWeights:
    table: np.ndarray  # [vocab, d] float32
    head_weight: np.ndarray  # [vocab, d] float32
    head_bias: np.ndarray  # [vocab] float32
    fingerprint: str | None = None  # of the export these weights came from (graphs.META_WEIGHTS_FINGERPRINT)

    @classmethod
    def load(cls, path: Path, layout: Layout) -> "HostWeights":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        from valle_export.errors import ValleExportError
        from valle_export.files import read_safetensors_header

        try:
            meta = read_safetensors_header(path).get("__metadata__") or {}
            t = load_file(str(path))
        except ValleExportError as err:
            raise BadInput(f"cannot read runtime weights ({err.problem})", path) from None
        except (SafetensorError, OSError, ValueError) as err:
            raise BadInput(f"cannot read runtime weights ({err})", path) from None
        want = {graphs.EMBED_TENSOR: (layout.vocab_size, layout.hidden_size),
                graphs.HEAD_WEIGHT_TENSOR: (layout.vocab_size, layout.hidden_size),
                graphs.HEAD_BIAS_TENSOR: (layout.vocab_size,)}
        for name, shape in want.items():
            if name not in t or t[name].shape != shape:
                got = t[name].shape if name in t else "missing"
                raise BadInput(f"tensor {name}: {got}, layout needs {shape}", path)
            if not np.isfinite(t[name]).all():
                raise BadInput(f"tensor {name} has NaN or infinite values", path)
        return cls(*(t[n].astype(np.float32) for n in want), fingerprint=meta.get(graphs.META_WEIGHTS_FINGERPRINT))

    def embed(self, rows: np.ndarray) -> np.ndarray:
        return seq.embed(self.table, rows)

    def head_logits(self, hidden: np.ndarray, layout: Layout, head: str) -> np.ndarray:
        """[n, head rows] = hidden [n, d] @ W[range].T + b[range], in float32."""
        h = layout.head(head)
        return apply_head(hidden, self.head_weight[h.start:h.stop], self.head_bias[h.start:h.stop])
