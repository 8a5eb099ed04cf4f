"""Write EnCodec 24 kHz as the encodec.cpp weight file (format and tensor table in
`valle_export/encodec_cpp_format.py`), from any source `load_codec` accepts; read back and checked against
the loader's table before the file appears."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from valle_export import encodec_cpp_format as fmt
from valle_export.files import atomic_path
from valle_export.progress import Progress
from reference_model.codec import hf_state_to_original

SKIPPED = ("inited", "cluster_size", "embed_avg")


def folded_weights(model) -> dict[str, np.ndarray]:
    """Original names -> float32 arrays, weight norm folded (g * v / ||v||, norm over all dims but 0)."""
    state = hf_state_to_original(model)
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if name.endswith("weight_g") or name.rsplit(".", 1)[-1] in SKIPPED:
            continue
        if name.endswith("weight_v"):
            prefix = name[: -len("_v")]
            value = torch._weight_norm(value, state[prefix + "_g"], 0)
            name = prefix
        out[name] = value.detach().float().numpy()
    return out


def write_encodec_cpp(model, path: Path, ftype: int = fmt.F16, progress: Progress | None = None) -> Path:
    progress = progress or Progress(quiet=True)
    h = fmt.Hparams(ftype=ftype)
    table = fmt.expected_tensors(h)
    weights = folded_weights(model)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(h.pack())
            for k, (name, array) in enumerate(weights.items()):
                ttype, dims = table[name]
                data = np.ascontiguousarray(array, dtype=fmt.DTYPES[ttype])
                encoded = name.encode("utf-8")
                f.write(struct.pack(f"<3i{len(dims)}i", len(dims), len(encoded), ttype, *dims))
                f.write(encoded)
                f.write(data.tobytes())
                progress.bar("tensors", k + 1, len(weights))
        fmt.check_against_loader(fmt.read_encodec_cpp(tmp), tmp)
    return path
