"""Read and check an adapter file as the original writes it (`lora.sft`), torch-free, for every consumer: the
merge at export (reference_model/lora.py) and the llama.cpp adapter writer (converters/gguf_lora.py).

Format (fixture mrq-lora README): safetensors with `model.layers.{i}.{self_attn.{q,v,o}_proj |
mlp.{gate,up,down}_proj}.lora_{A,B}` (A [rank, in], B [out, rank], float) and one metadata key `config`, the
JSON of the original's LoRA config (`rank`, `alpha`, `rvq_levels`, `parametrize`, `name`, ...). The original
loads it non-strictly (a wrong name leaves the adapter inert without a word); here every tensor must adapt a
module the original adapts, every A needs its B, every shape must fit the model: one error line otherwise.
`rvq_levels` (an adapter active at some RVQ levels only) and `parametrize` adapters are refused by name: a
merged export would apply the former everywhere, and the latter has another tensor layout.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from . import names, tensor_table as tt
from .config import ValleConfig
from .errors import BadCheckpoint, UnsupportedModel
from .files import read_safetensors_header

LORA_SUFFIXES = (".sft", ".safetensors")
_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)\.lora_([AB])$")
_MAX_NAMED = 4  # tensors named in one error line


@dataclasses.dataclass(frozen=True)
class LoraRecord:
    """What an export records about the adapter merged into it (uniform folder, ONNX metadata, GGUF key)."""

    file: str
    sha256: str
    name: str
    rank: int
    alpha: float
    modules: int

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "scale": self.scale})

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "lora record") -> "LoraRecord":
        try:
            d = json.loads(text)
            return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})
        except (ValueError, KeyError, TypeError) as err:
            raise BadCheckpoint(f"unreadable LoRA record ({err})", source) from None

    def describe(self) -> str:
        return (f"{self.name!r} from {self.file} (rank {self.rank}, alpha {self.alpha:g}, scale {self.scale:g}, "
                f"{self.modules} modules, sha256 {self.sha256[:12]})")


@dataclasses.dataclass(frozen=True)
class LoraAdapter:
    """A checked adapter: `pairs[(layer, row)] = (A, B)` as float32 arrays, `row` from `tensor_table.LORA_TENSORS`."""

    record: LoraRecord
    pairs: dict[tuple[int, tt.LayerTensor], tuple[np.ndarray, np.ndarray]]

    @property
    def scale(self) -> float:
        return self.record.scale


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _config(meta: dict, path: Path) -> tuple[str, int, float]:
    """(name, rank, alpha) from the `config` metadata; refuses what a merge cannot reproduce."""
    if names.META_CONFIG not in meta:
        raise BadCheckpoint("adapter has no 'config' metadata (the original cannot load it either)", path)
    try:
        cfg = json.loads(meta[names.META_CONFIG])
    except ValueError as err:
        raise BadCheckpoint(f"adapter 'config' metadata is not JSON ({err})", path) from None
    if not isinstance(cfg, dict):
        raise BadCheckpoint("adapter 'config' metadata is not a JSON object", path)
    rank, alpha = cfg.get("rank"), cfg.get("alpha")
    if type(rank) is not int or rank <= 0:
        raise BadCheckpoint(f"adapter config rank {rank!r} is not a positive integer", path)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha) or alpha <= 0:
        raise BadCheckpoint(f"adapter config alpha {alpha!r} is not a positive number", path)
    levels = cfg.get("rvq_levels") or []
    if levels:
        raise UnsupportedModel(f"adapter is active only at RVQ levels {levels} (rvq_levels); a merged export would "
                               "apply it at every level, so rvq_levels adapters are refused", path)
    if cfg.get("parametrize"):
        raise UnsupportedModel("parametrize adapters (torch parametrization layout) are refused; re-export the "
                               "adapter with parametrize: false", path)
    return str(cfg.get("name") or path.stem), rank, float(alpha)


def _named(items: list[str]) -> str:
    more = " ..." if len(items) > _MAX_NAMED else ""
    return ", ".join(items[:_MAX_NAMED]) + more


def _index(keys: list[str], cfg: ValleConfig, path: Path) -> dict[tuple[int, tt.LayerTensor], dict[str, str]]:
    """(layer, row) -> {"A": name, "B": name}; unmatched names and missing partners are one error."""
    by_suffix = {row.lora_suffix(part): (row, part) for row in tt.LORA_TENSORS for part in tt.LORA_PARTS}
    found: dict[tuple[int, tt.LayerTensor], dict[str, str]] = {}
    unmatched = []
    for key in keys:
        m = _NAME.match(key)
        hit = by_suffix.get(f"{m.group(2)}.lora_{m.group(3)}") if m else None
        if hit is None or int(m.group(1)) >= cfg.n_layers:
            unmatched.append(key)
            continue
        found.setdefault((int(m.group(1)), hit[0]), {})[hit[1]] = key
    if unmatched:
        adapted = ", ".join(r.suffix.removesuffix(".weight") for r in tt.LORA_TENSORS)
        raise BadCheckpoint(f"{len(unmatched)} adapter tensor(s) match no module the original adapts ({adapted} "
                            f"of layers 0..{cfg.n_layers - 1}): {_named(unmatched)}", path)
    lonely = [f"{next(iter(p.values()))} has no lora_{'B' if 'A' in p else 'A'}" for p in found.values() if len(p) < 2]
    if lonely:
        raise BadCheckpoint(f"missing partner: {_named(lonely)}", path)
    if not found:
        raise BadCheckpoint("adapter holds no lora_A / lora_B tensors", path)
    return found


def read_lora(path: str | os.PathLike, cfg: ValleConfig) -> LoraAdapter:
    """The adapter at `path`, checked against the model `cfg` (names, partners, shapes, dtype, finite)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise BadCheckpoint("adapter file not found", path)
    if path.suffix not in LORA_SUFFIXES:
        raise BadCheckpoint(f"adapter must be a safetensors file ({', '.join(LORA_SUFFIXES)}), as the original's "
                            "--export-lora writes it", path)
    header = read_safetensors_header(path)
    name, rank, alpha = _config(header.get("__metadata__") or {}, path)
    index = _index([k for k in header if k != "__metadata__"], cfg, path)
    d, kv = cfg.d_model, cfg.n_heads * cfg.head_dim
    pairs, wrong = {}, []
    try:
        with safe_open(str(path), "np") as fh:
            for (layer, row), parts in sorted(index.items(), key=lambda kv_: (kv_[0][0], kv_[0][1].suffix)):
                out_f, in_f = row.shape_for(d, kv, cfg.d_ffn)
                a, b = fh.get_tensor(parts["A"]), fh.get_tensor(parts["B"])
                for tensor, key, want in ((a, parts["A"], (rank, in_f)), (b, parts["B"], (out_f, rank))):
                    if tuple(tensor.shape) != want:
                        wrong.append(f"{key} {tuple(tensor.shape)} (expected {want})")
                    elif tensor.dtype.kind != "f" or not np.isfinite(tensor).all():
                        raise BadCheckpoint(f"tensor {key} is not finite floating point", path)
                pairs[(layer, row)] = (a.astype(np.float32), b.astype(np.float32))
    except (SafetensorError, OSError) as err:
        raise BadCheckpoint(f"corrupt adapter file ({err})", path) from None
    if wrong:
        raise BadCheckpoint(f"shape mismatch (rank {rank}): {'; '.join(wrong[:_MAX_NAMED])}"
                            f"{' ...' if len(wrong) > _MAX_NAMED else ''}", path)
    record = LoraRecord(path.name, file_sha256(path), name, rank, alpha, len(pairs))
    return LoraAdapter(record, pairs)


def recorded_lora(model: str | os.PathLike) -> LoraRecord | None:
    """The adapter an export records as merged (GGUF key, ONNX weights metadata, uniform folder file), or None."""
    from . import graphs
    from .paths import FolderKind, folder_kind

    model = Path(model)
    text = None
    if model.is_dir():
        kind = folder_kind(model)
        if kind is FolderKind.ONNX and (model / graphs.WEIGHTS_FILE).is_file():
            meta = read_safetensors_header(model / graphs.WEIGHTS_FILE).get("__metadata__") or {}
            text = meta.get(graphs.META_LORA)
        elif kind is FolderKind.UNIFORM and (model / names.LORA_RECORD_FILE).is_file():
            text = (model / names.LORA_RECORD_FILE).read_text()
    elif model.suffix == ".gguf" and model.is_file():
        import gguf

        field = gguf.GGUFReader(str(model)).fields.get(names.GGUF_LORA)
        text = None if field is None else field.contents()
    return None if text is None else LoraRecord.from_json(text, str(model))
