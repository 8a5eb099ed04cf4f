"""A seeded random-weight checkpoint in the ORIGINAL's native format (`fp32.sft` + config metadata).

It is the embedded default model of the demo and the benchmarks (nothing can be downloaded), and the
source of every random test model. Weights are drawn as the fixture README describes, so that the
transformer is far from an identity map and position / mask errors show up in the logits:
tables and `sep` N(0, 1); projections N(0, 1/fan_in); norm weights 1 + N(0, 0.1^2);
head weights N(0, (1.5/sqrt(d))^2); head biases N(0, 0.5^2).
"""
from __future__ import annotations

import json
import math
import os

import torch

from valle_export import names
from valle_export.config import parse_config
from valle_export.files import atomic_path

from valle_export.demo_config import SIZES, DemoSpec, demo_config  # noqa: F401 (re-exported)

from .checkpoint import expected_shapes

RAW_TEXT_TOKENS = 8575


def _draw(name: str, shape: tuple[int, ...], d: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    if name.startswith("classifiers."):
        return x * (0.5 if name.endswith(".bias") else 1.5 / math.sqrt(d))
    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * x
    if name.startswith("model.layers."):
        return x / math.sqrt(shape[1])
    return x


def demo_state_dict(spec: DemoSpec) -> tuple[dict, dict[str, torch.Tensor]]:
    raw = demo_config(spec)
    cfg = parse_config(raw, "demo config")
    shapes = expected_shapes(cfg)
    shapes[names.NATIVE_RAW_TEXT] = (RAW_TEXT_TOKENS, cfg.d_model)  # the original always has these two
    shapes[names.NATIVE_DROPOUT_TOKEN] = (cfg.d_model,)
    gen = torch.Generator().manual_seed(spec.seed)
    return raw, {k: _draw(k, shapes[k], cfg.d_model, gen) for k in sorted(shapes)}


def write_demo_checkpoint(out_dir: str | os.PathLike, spec: DemoSpec) -> str:
    """Write `<out_dir>/fp32.sft` atomically; returns its path."""
    from safetensors.torch import save_file

    raw, tensors = demo_state_dict(spec)
    final = os.path.join(out_dir, names.CHECKPOINT_SFT)
    meta = {names.META_CONFIG: json.dumps(raw), names.META_USERDATA: json.dumps({}),
            names.META_STATS: json.dumps({"global_step": 0})}
    with atomic_path(final) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    from valle_export.demo_tokenizer import demo_tokenizer_json

    with atomic_path(os.path.join(out_dir, names.TOKENIZER_FILE)) as tmp:
        tmp.write_text(demo_tokenizer_json(), encoding="utf-8")
    return final
