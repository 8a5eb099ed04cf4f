"""Read a freshly written GGUF back with `gguf.GGUFReader` and check it against the uniform model before
success is reported: the tensor table (names, shapes), every `valle.*` key, the head rows and biases, and
each tensor's dequantized error within the bound of its type."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from valle_export.errors import ValleExportError
from runtimes.gguf_file import GgufModelFile

from . import gguf_export, gguf_targets as targets

# max |dequantized - source| / max |source| per GGML type (f16 rounding ~5e-4, bf16 ~4e-3, 8-bit ~1e-2)
TYPE_REL_BOUND = {"F32": 0.0, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 2e-2, "Q6_K": 5e-2, "Q5_K": 1e-1, "Q5_0": 1e-1,
                  "Q5_1": 1e-1, "Q4_K": 2e-1, "Q4_0": 2e-1, "Q4_1": 2e-1, "Q3_K": 4e-1, "Q2_K": 6e-1}


def verify_gguf(path: Path, model, target: targets.Target, outtype: str) -> dict:
    f = GgufModelFile.open(path)
    problems = []
    if f.arch != target.arch:
        problems.append(f"arch {f.arch} != {target.arch}")
    if f.layout != model.layout:
        problems.append("valle.layout differs from the model's layout")
    source = gguf_export.gguf_tensors(model, target)
    expected = {k: v.shape for k, v in source.items()}
    if f.tensor_shapes != {k: tuple(v) for k, v in expected.items()}:
        missing = sorted(set(expected) - set(f.tensor_shapes))
        extra = sorted(set(f.tensor_shapes) - set(expected))
        problems.append(f"tensor table differs (missing {missing[:3]}, extra {extra[:3]})")
    if not np.array_equal(f.head_bias, gguf_export.head_bias_vector(model)):
        problems.append("valle.head_bias differs from the model's head biases")
    worst: dict[str, float] = {}
    for name, want in (source.items() if not problems else ()):
        got = f.tensor(name)
        rel = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
        kind = f.tensor_types[name]
        worst[kind] = float(np.maximum(worst.get(kind, 0.0), rel))  # NaN propagates (max() would drop it)
        if not rel <= TYPE_REL_BOUND.get(kind, 1.0):  # NaN-safe: a NaN error fails
            problems.append(f"{name} ({kind}) dequantized error {rel:.2e} > {TYPE_REL_BOUND.get(kind, 1.0):g}")
    stored = {k: v.status for k, v in f.exactness.items()}
    actual = {k: v.status for k, v in f.llamacpp_verdicts().items()}
    if stored != actual:
        problems.append(f"valle.exactness {stored} disagrees with the stored tensor types {actual}")
    if problems:
        raise ValleExportError("GGUF verification failed: " + "; ".join(problems[:4]), path)
    types = ", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items()))
    return {"arch": f.arch, "tensors": len(f.tensor_types), "worst_by_type": worst, "exactness": f.llamacpp_verdicts(),
            "summary": f"verified {len(f.tensor_types)} tensors ({f.arch}); max relative error by type: {types}"}
