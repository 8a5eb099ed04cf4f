"""`valle-export gguf-lora`: the original's adapter (`lora.sft`) as a llama.cpp LoRA adapter GGUF for one base
GGUF, so one base file serves many voices (`synthesize --lora adapter.gguf` on the llama.cpp backend).

The file is what llama.cpp's own convert_lora_to_gguf.py writes and `llama_adapter_lora_init` loads:
`general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, the base's `general.architecture`, and per
adapted weight `blk.N.<tensor>.weight.lora_a` (A, [rank, in]) and `.lora_b` (B, [out, rank]), float32. llama.cpp
scales by `alpha / rank` (rank read from A) times the scale it is applied with, as the original. Q rows are
permuted like the base's when the base stores Q/K interleaved (arch llama). `valle.lora` records the adapter.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from valle_export import names, tensor_table as tt
from valle_export.config import parse_config
from valle_export.errors import BadInput
from valle_export.files import atomic_path
from valle_export.lora_file import LoraAdapter, read_lora
from runtimes.gguf_file import GgufModelFile

from . import gguf_targets as targets


def adapter_tensors(adapter: LoraAdapter, base: GgufModelFile, n_heads: int) -> dict[str, np.ndarray]:
    """Every lora_a / lora_b tensor for `base`, checked against the base's own tensor shapes."""
    out = {}
    for (layer, row), (a, b) in sorted(adapter.pairs.items(), key=lambda kv: (kv[0][0], kv[0][1].suffix)):
        weight = row.gguf_name(layer)
        if weight not in base.tensor_shapes:
            raise BadInput(f"base GGUF has no tensor {weight} for the adapter", base.path)
        if base.qk_layout == tt.QK_INTERLEAVED and row.is_qk:
            b = targets.permute_qk(b, n_heads)  # B's rows are the weight's output rows
        out[row.lora_gguf_name(layer, "A")] = np.ascontiguousarray(a, dtype=np.float32)
        out[row.lora_gguf_name(layer, "B")] = np.ascontiguousarray(b, dtype=np.float32)
    return out


def write_gguf_lora(lora: Path, base_path: Path, out: Path) -> dict:
    """Write the adapter GGUF atomically; returns {arch, tensors, record}."""
    import gguf

    base = GgufModelFile.open(base_path)
    field = base._reader.fields.get(names.GGUF_LORA)
    if field is not None:
        raise BadInput("base GGUF already has an adapter merged (valle.lora); write the base without --lora",
                       base_path)
    cfg = parse_config(json.dumps(base.source_config), f"{base_path}:{names.GGUF_SOURCE_CONFIG}")
    adapter = read_lora(lora, cfg)
    tensors = adapter_tensors(adapter, base, cfg.n_heads)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), base.arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(adapter.record.alpha))
        writer.add_name(adapter.record.name)
        writer.add_string(names.GGUF_LORA, adapter.record.to_json())
        for name, data in tensors.items():
            writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.F32)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        back = gguf.GGUFReader(str(tmp))  # read back: every tensor, bit for bit
        for t in back.tensors:
            if not np.array_equal(np.asarray(t.data).reshape(tensors[t.name].shape), tensors[t.name]):
                raise BadInput(f"adapter tensor {t.name} did not read back identically", out)
        if len(back.tensors) != len(tensors):
            raise BadInput(f"adapter read back {len(back.tensors)} tensors, wrote {len(tensors)}", out)
    return {"arch": base.arch, "tensors": len(tensors), "record": adapter.record}
