"""Load a native VALL-E checkpoint (`fp32.sft` with `__metadata__["config"]`, or `.pth` with
`weights_only=True`) into a `ValleConfig` and a float32 state dict, checking every name and shape.

Every missing, unexpected or wrong-shaped tensor is reported in ONE error naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch

from valle_export import contracts, names, tensor_table as tt
from valle_export.config import ValleConfig, parse_config
from valle_export.errors import BadCheckpoint
from valle_export.files import read_safetensors_header
from valle_export.layout import layout_from_config
from valle_export.paths import FolderKind, folder_kind


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the `fp32.sft` / `fp32.pth` inside a folder."""
    path = Path(path)
    if path.is_dir():
        for name in (names.CHECKPOINT_SFT, names.CHECKPOINT_PTH):
            if (path / name).is_file():
                return path / name
        kind = folder_kind(path)
        what = "" if kind in (FolderKind.EMPTY, FolderKind.OTHER) else f" (it is {kind.value})"
        raise BadCheckpoint(f"folder has no {names.CHECKPOINT_SFT} or {names.CHECKPOINT_PTH}{what}", path)
    if not path.exists():
        raise BadCheckpoint("file not found", path)
    return path


def _load_sft(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header = read_safetensors_header(path)
    meta = header.get("__metadata__") or {}
    if names.META_CONFIG not in meta:
        raise BadCheckpoint("safetensors metadata has no 'config' (not a vall-e export)", path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise BadCheckpoint(f"corrupt safetensors file ({err})", path) from None
    return meta[names.META_CONFIG], tensors  # JSON text: `parse_config` reports its errors naming the file


def _load_pth(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - weights_only runs no code; a text or random file fails in many ways
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise BadCheckpoint(f"cannot load as a weights-only torch file ({first})", path) from None
    if not isinstance(blob, dict) or names.PTH_MODULE not in blob:
        raise BadCheckpoint("torch file has no 'module' state dict (not a vall-e checkpoint)", path)
    if names.META_CONFIG not in blob:
        raise BadCheckpoint("torch file has no 'config' (re-export it with its config)", path)
    module = blob[names.PTH_MODULE]
    if not isinstance(module, dict) or not all(isinstance(v, torch.Tensor) for v in module.values()):
        raise BadCheckpoint("torch file's 'module' is not a state dict of tensors", path)
    return blob[names.META_CONFIG], module


def expected_shapes(cfg: ValleConfig) -> dict[str, tuple[int, ...]]:
    """Every native tensor the uniform form consumes, with its shape."""
    layout = layout_from_config(cfg)
    d = cfg.d_model
    kv = cfg.n_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {}
    for t in layout.tables:
        shapes[t.source] = (d,) if t.source == names.NATIVE_SEP else (t.rows, d)
    for h in layout.heads:
        shapes[names.native_head_weight(h.index)] = (h.rows, d)
        if h.has_bias:
            shapes[names.native_head_bias(h.index)] = (h.rows,)
    per_layer = {row.suffix: row.shape_for(d, kv, cfg.d_ffn) for row in tt.LAYER_TENSORS}
    for layer in range(cfg.n_layers):
        for suffix, shape in per_layer.items():
            shapes[names.native_layer_tensor(layer, suffix)] = shape
    shapes[names.NATIVE_FINAL_NORM] = (d,)
    return shapes


def _check_tensors(cfg: ValleConfig, tensors: dict[str, torch.Tensor], path: Path) -> None:
    layout = layout_from_config(cfg)
    expected = expected_shapes(cfg)
    dropped = {name for name, _ in layout.dropped}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    report = contracts.mismatch_report(expected, found, ignored=dropped)
    if report:
        raise BadCheckpoint(report, path)
    bad = [k for k in expected if not tensors[k].is_floating_point()]
    if bad:
        raise BadCheckpoint(f"non-float tensor(s): {', '.join(bad[:4])}", path)
    check_finite(((k, tensors[k]) for k in expected), path)


def check_finite(named: Iterable[tuple[str, torch.Tensor]], path) -> None:
    """Refuse NaN or infinite weights, naming the first tensor: an export of them cannot be verified (every
    comparison with NaN is false) and would compute garbage."""
    for name, tensor in named:
        if not bool(torch.isfinite(tensor).all()):
            raise BadCheckpoint(f"tensor {name} has NaN or infinite values", path)


def load_checkpoint(path: str | os.PathLike) -> tuple[ValleConfig, dict[str, torch.Tensor], Path]:
    """(config, float32 state dict, resolved file) of a native checkpoint, fully validated."""
    file = find_checkpoint(path)
    if file.suffix == ".sft" or file.suffix == ".safetensors":
        raw_cfg, tensors = _load_sft(file)
    elif file.suffix in (".pth", ".pt"):
        raw_cfg, tensors = _load_pth(file)
    else:
        raise BadCheckpoint("unknown checkpoint type (expected .sft or .pth)", file)
    cfg = parse_config(raw_cfg, str(file))
    _check_tensors(cfg, tensors, file)
    return cfg, {k: v.to(torch.float32) for k, v in tensors.items()}, file
