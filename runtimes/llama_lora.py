"""A LoRA adapter GGUF (`valle-export gguf-lora`) applied by stock llama.cpp at run time: loaded with
`llama_adapter_lora_init` against the base model and set on every context with a scale (llama.cpp multiplies
`alpha / rank` from the file by it). The adapter is checked first (type, arch, the record of what it holds), so
a wrong file is one error line rather than a llama.cpp log message."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from valle_export import names
from valle_export.errors import BadInput
from valle_export.lora_file import LoraRecord


@dataclasses.dataclass(frozen=True)
class RuntimeAdapter:
    path: Path
    record: LoraRecord
    scale: float
    handle: object  # llama_adapter_lora_p, freed with the model


def check_adapter_file(path: Path, base_arch: str) -> LoraRecord:
    """The adapter's record, after checking it is a LoRA adapter GGUF for a base of arch `base_arch`."""
    import gguf

    if not path.is_file():
        raise BadInput("adapter file not found", path)
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as err:
        raise BadInput(f"not a readable GGUF file ({str(err).splitlines()[0][:160]})", path) from None

    def value(key: str):
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    if value(gguf.Keys.General.TYPE) != gguf.GGUFType.ADAPTER or value(gguf.Keys.Adapter.TYPE) != "lora":
        raise BadInput("not a LoRA adapter GGUF (write one with `valle-export gguf-lora`)", path)
    arch = value(gguf.Keys.General.ARCHITECTURE)
    if arch != base_arch:
        raise BadInput(f"adapter is for arch {arch!r}, the model is {base_arch!r} (write it with --base MODEL)", path)
    record = value(names.GGUF_LORA)
    if record is None:
        raise BadInput("adapter GGUF has no valle.lora record (not written by valle-export gguf-lora)", path)
    return LoraRecord.from_json(record, str(path))


def load_adapter(L, model, path: Path, base_arch: str, scale: float, log_tail) -> RuntimeAdapter:
    """Load `path` for `model` (llama.cpp checks every tensor against the base's shapes)."""
    record = check_adapter_file(path, base_arch)
    handle = L.llama_adapter_lora_init(model, str(path).encode())
    if not handle:
        raise BadInput(f"llama.cpp refused the adapter ({log_tail() or 'no message'})", path)
    return RuntimeAdapter(path, record, scale, handle)


def apply_adapter(L, ctx, adapter: RuntimeAdapter) -> None:
    """Set the adapter on one context (each context llama.cpp creates needs it)."""
    import ctypes

    handles = (L.llama_adapter_lora_p_ctypes * 1)(adapter.handle)
    scales = (ctypes.c_float * 1)(adapter.scale)
    rc = L.llama_set_adapters_lora(ctx, handles, 1, scales)
    if rc != 0:
        raise BadInput(f"llama.cpp could not apply the adapter (code {rc})", adapter.path)
