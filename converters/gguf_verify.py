"""Read a freshly written GGUF back with `gguf.GGUFReader` (through the runtime's own reader) and check it
against the tensors it was written from before success is reported: the tensor table (names, shapes), every
`valle.*` key, the head biases, each tensor's dequantized error within the bound of its type
(`valle_export.contracts.GGUF_TYPE_REL`), and the stored exactness verdict against the stored types."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtimes.gguf_file import GgufModelFile
from valle_export import contracts
from valle_export.errors import ValleExportError
from valle_export.layout import Layout

from . import gguf_targets as targets
from .gguf_tensors import GgufSource


def verify_gguf(path: Path, source: GgufSource, target: targets.Target, layout: Layout) -> dict:
    f = GgufModelFile.open(path)
    problems = []
    if f.arch != target.arch:
        problems.append(f"arch {f.arch} != {target.arch}")
    if f.layout != layout:
        problems.append("valle.layout differs from the model's layout")
    report = contracts.mismatch_report({k: v.shape for k, v in source.tensors.items()}, f.tensor_shapes, limit=3)
    if report:
        problems.append(f"tensor table differs ({report})")
    if not np.array_equal(f.head_bias, source.head_bias):
        problems.append("valle.head_bias differs from the model's head biases")
    worst: dict[str, float] = {}
    for name, want in (source.tensors.items() if not problems else ()):
        rel = contracts.rel_error(f.tensor(name), want)
        kind = f.tensor_types[name]
        bound = contracts.GGUF_TYPE_REL.get(kind, contracts.GGUF_UNKNOWN_TYPE_REL)
        worst[kind] = float(np.maximum(worst.get(kind, 0.0), rel))  # NaN propagates (max() would drop it)
        if not contracts.within(rel, bound):
            problems.append(f"{name} ({kind}) dequantized error {rel:.2e} > {bound:g}")
    stored = {k: v.status for k, v in f.exactness.items()}
    actual = {k: v.status for k, v in f.llamacpp_verdicts().items()}
    if stored != actual:
        problems.append(f"valle.exactness {stored} disagrees with the stored tensor types {actual}")
    if problems:
        raise ValleExportError("GGUF verification failed: " + "; ".join(problems[:4]), path)
    types = ", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items()))
    return {"arch": f.arch, "tensors": len(f.tensor_types), "worst_by_type": worst, "exactness": f.llamacpp_verdicts(),
            "summary": f"verified {len(f.tensor_types)} tensors ({f.arch}); "
            f"max relative error by type: {types}"}
