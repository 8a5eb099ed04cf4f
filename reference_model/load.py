"""One entry point for every model path a command accepts: a native checkpoint file, a folder holding
`fp32.sft` / `fp32.pth`, or a uniform folder written by `valle-export convert`."""
from __future__ import annotations

import os
from pathlib import Path

from valle_export import names

from .checkpoint import find_checkpoint, load_checkpoint
from .hf_folder import is_uniform_folder, load_uniform_folder
from .model import UniformValleModel


def load_reference(path: str | os.PathLike) -> UniformValleModel:
    if is_uniform_folder(path):
        return load_uniform_folder(path)
    cfg, tensors, _ = load_checkpoint(path)
    return UniformValleModel.from_native(cfg, tensors)


def tokenizer_beside(path: str | os.PathLike) -> Path | None:
    """`tokenizer.json` in the checkpoint's folder (or the folder given), if any."""
    folder = Path(path) if Path(path).is_dir() else find_checkpoint(path).parent
    candidate = folder / names.TOKENIZER_FILE
    return candidate if candidate.is_file() else None
