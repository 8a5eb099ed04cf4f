"""The HF-compatible uniform folder: what `valle-export convert` writes and `AutoModelForCausalLM` loads.

    config.json, model.safetensors      LlamaForCausalLM (untied; lm_head = every head stacked)
    valle_layout.json                   the Layout (row ranges, heads, position mode, mask policy)
    valle_source_config.json            the native config, as the original wrote it
    valle_head_bias.safetensors         lm_head.bias [vocab] (LlamaForCausalLM has no head bias)
    valle_lora.json                     the adapter merged into the weights, when one was (LoraRecord)
    tokenizer.json                      copied from the checkpoint folder when present
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from valle_export import names
from valle_export.config import parse_config
from valle_export.errors import BadCheckpoint
from valle_export.files import atomic_dir
from valle_export.layout import Layout, layout_from_config
from valle_export.lora_file import LoraRecord
from valle_export.paths import FolderKind, folder_kind

from .checkpoint import check_finite
from .model import UniformValleModel


def _quiet_transformers() -> None:
    """No progress bars or info logs from transformers inside our commands (we report progress ourselves)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def is_uniform_folder(path: str | os.PathLike) -> bool:
    """A folder written by `save_uniform_folder` (not an ONNX export, which also holds a layout)."""
    return Path(path).is_dir() and folder_kind(path) is FolderKind.UNIFORM


def save_uniform_folder(model: UniformValleModel, out_dir: str | os.PathLike, tokenizer: Path | None = None) -> Path:
    """Write the folder atomically (files appear only when all are written)."""
    _quiet_transformers()
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.llama.save_pretrained(tmp)
        (tmp / names.LAYOUT_FILE).write_text(model.layout.to_json())
        (tmp / names.SOURCE_CONFIG_FILE).write_text(json.dumps(model.cfg.raw, indent=1))
        save_file({names.HEAD_BIAS_TENSOR: model.head_bias.contiguous()}, str(tmp / names.HEAD_BIAS_FILE))
        if model.lora is not None:
            (tmp / names.LORA_RECORD_FILE).write_text(model.lora.to_json())
        if tokenizer is not None and tokenizer.is_file():
            shutil.copyfile(tokenizer, tmp / names.TOKENIZER_FILE)
    return out_dir


def load_uniform_folder(folder: str | os.PathLike) -> UniformValleModel:
    """Load a folder written by `save_uniform_folder`; checks the layout against the source config."""
    from transformers import LlamaForCausalLM

    _quiet_transformers()
    folder = Path(folder)
    for f in (names.LAYOUT_FILE, names.SOURCE_CONFIG_FILE, names.HEAD_BIAS_FILE, names.HF_CONFIG_FILE):
        if not (folder / f).is_file():
            raise BadCheckpoint(f"uniform folder is missing {f}", folder)
    cfg = parse_config((folder / names.SOURCE_CONFIG_FILE).read_bytes(), str(folder / names.SOURCE_CONFIG_FILE))
    layout = Layout.from_json((folder / names.LAYOUT_FILE).read_bytes(), str(folder / names.LAYOUT_FILE))
    if layout != layout_from_config(cfg):
        raise BadCheckpoint("valle_layout.json disagrees with the source config", folder / names.LAYOUT_FILE)
    try:
        llama = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
        bias = load_file(str(folder / names.HEAD_BIAS_FILE))[names.HEAD_BIAS_TENSOR]
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadCheckpoint(f"cannot load the uniform weights ({first})", folder) from None
    got = (llama.config.vocab_size, llama.config.hidden_size, llama.config.num_hidden_layers)
    if got != (layout.vocab_size, layout.hidden_size, cfg.n_layers):
        raise BadCheckpoint(f"config.json (vocab, hidden, layers) {got} disagrees with the layout "
                            f"{(layout.vocab_size, layout.hidden_size, cfg.n_layers)}", folder / names.HF_CONFIG_FILE)
    if tuple(bias.shape) != (layout.vocab_size,):
        raise BadCheckpoint(f"head bias has shape {tuple(bias.shape)}, layout says ({layout.vocab_size},)", folder)
    check_finite([*llama.state_dict().items(), (names.HEAD_BIAS_TENSOR, bias)], folder)
    model = UniformValleModel(llama, layout, bias, cfg)
    record = folder / names.LORA_RECORD_FILE
    if record.is_file():
        model.lora = LoraRecord.from_json(record.read_bytes(), str(record))
    return model
