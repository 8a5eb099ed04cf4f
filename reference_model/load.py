"""One entry point for every model path a command accepts: a native checkpoint file, a folder holding
`fp32.sft` / `fp32.pth`, or a uniform folder written by `valle-export convert`."""
from __future__ import annotations

import os
from pathlib import Path

from valle_export import names

from .checkpoint import find_checkpoint, load_checkpoint
from .hf_folder import is_uniform_folder, load_uniform_folder
from .model import UniformValleModel


def load_reference(path: str | os.PathLike, lora: str | os.PathLike | None = None) -> UniformValleModel:
    """The reference model of `path`, with the adapter file `lora` merged into it when given."""
    if is_uniform_folder(path):
        model = load_uniform_folder(path)
    else:
        cfg, tensors, _ = load_checkpoint(path)
        model = UniformValleModel.from_native(cfg, tensors)
    if lora is not None:
        from .lora import merge_lora_file

        merge_lora_file(model, lora)
    return model


def tokenizer_beside(path: str | os.PathLike) -> Path | None:
    """`tokenizer.json` in the checkpoint's folder (or the folder given), if any."""
    folder = Path(path) if Path(path).is_dir() else find_checkpoint(path).parent
    candidate = folder / names.TOKENIZER_FILE
    return candidate if candidate.is_file() else None
