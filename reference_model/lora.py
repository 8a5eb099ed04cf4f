"""The one LoRA merge every exporter uses: `W' = W + (alpha / rank) B A` into q, v, o, gate, up and down of every
layer of the uniform model (what the original's `LoRALinear` computes in eval mode, where its dropout is off).

The product is formed in float64 and the sum rounded once to float32, so the merged weights are as close to the
original's unmerged `x W^T + s (x A^T) B^T` as float32 weights can be (fixture mrq-lora: 4.9e-6 max abs in
the original's own merge check). The model remembers the adapter (`model.lora`), and every export records it.
"""
from __future__ import annotations

import os

import torch

from valle_export import names
from valle_export.errors import BadCheckpoint
from valle_export.lora_file import LoraAdapter, read_lora

from .model import UniformValleModel


def merge_lora(model: UniformValleModel, adapter: LoraAdapter) -> UniformValleModel:
    """Merge `adapter` into `model` in place (refused when the model already carries one); returns `model`."""
    if model.lora is not None:
        raise BadCheckpoint(f"model already has adapter {model.lora.describe()} merged; merge into the base "
                            "checkpoint instead", adapter.record.file)
    params = dict(model.llama.named_parameters())
    with torch.no_grad():
        for (layer, row), (a, b) in adapter.pairs.items():
            weight = params[names.native_layer_tensor(layer, row.suffix)]
            delta = torch.from_numpy(b).double() @ torch.from_numpy(a).double() * adapter.scale
            weight.copy_((weight.double() + delta).to(torch.float32))
    model.lora = adapter.record
    return model


def merge_lora_file(model: UniformValleModel, path: str | os.PathLike) -> UniformValleModel:
    """Read `path` (checked against the model's config) and merge it."""
    return merge_lora(model, read_lora(path, model.cfg))
