"""Read a valle-export GGUF with gguf-py (no torch): the layout and every `valle.*` key, and the head rows
(dequantized to float32) that the runtimes apply on the host."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from valle_export import exactness, names, tensor_table as tt
from valle_export.errors import BadInput
from valle_export.layout import Layout



@dataclasses.dataclass(frozen=True)
class Hparams:
    """The decoder sizes as the GGUF's standard keys state them (what llama.cpp itself reads)."""

    n_layers: int
    n_embd: int
    n_ff: int
    n_heads: int
    n_heads_kv: int
    rms_eps: float
    rope_base: float

    @classmethod
    def read(cls, reader, arch: str, path: Path) -> "Hparams":
        def key(template: str):
            return _field(reader, template.format(arch=arch), path)

        hp = cls(int(key(tt.KEY_BLOCKS)), int(key(tt.KEY_EMBD)), int(key(tt.KEY_FFN)), int(key(tt.KEY_HEADS)),
                 int(key(tt.KEY_HEADS_KV)), float(key(tt.KEY_RMS_EPS)), float(key(tt.KEY_ROPE_BASE)))
        if min(hp.n_layers, hp.n_embd, hp.n_ff, hp.n_heads, hp.n_heads_kv) <= 0 or hp.n_embd % hp.n_heads:
            raise BadInput(f"GGUF sizes are inconsistent ({hp})", path)
        return hp


def _field(reader, key: str, path: Path, required: bool = True):
    field = reader.get_field(key)
    if field is None:
        if required:
            raise BadInput(f"GGUF has no {key} (not written by valle-export)", path)
        return None
    return field.contents()


def _verdicts(text: str, path: Path) -> exactness.Verdicts:
    try:
        return exactness.from_json(text)
    except (ValueError, KeyError, TypeError) as err:
        raise BadInput(f"GGUF has a malformed {names.GGUF_EXACTNESS} ({err})", path) from None


@dataclasses.dataclass
class GgufModelFile:
    path: Path
    arch: str
    hparams: Hparams
    layout: Layout
    source_config: dict
    tokenizer: str | None
    head_row_start: int
    head_bias: np.ndarray  # [head rows] float32, heads in layout order
    input_scale: float
    qk_layout: str
    exactness: exactness.Verdicts  # as stored (stock llama.cpp, F32 KV); backends recompute from the file
    tensor_types: dict[str, str]
    tensor_shapes: dict[str, tuple[int, ...]]
    _reader: object = dataclasses.field(repr=False, default=None)
    _token_embd: np.ndarray | None = dataclasses.field(repr=False, default=None)

    @classmethod
    def open(cls, path: str | Path) -> "GgufModelFile":
        import gguf

        path = Path(path)
        if not path.is_file():
            raise BadInput("file not found", path)
        try:
            reader = gguf.GGUFReader(str(path))
        except (ValueError, OSError, IndexError, KeyError) as err:
            raise BadInput(f"not a readable GGUF file ({str(err).splitlines()[0][:160]})", path) from None
        layout = Layout.from_json(_field(reader, names.GGUF_LAYOUT, path), f"{path}:{names.GGUF_LAYOUT}")
        arch = _field(reader, tt.KEY_ARCH, path)
        return cls(
            path=path,
            arch=arch,
            hparams=Hparams.read(reader, arch, path),
            layout=layout,
            source_config=json.loads(_field(reader, names.GGUF_SOURCE_CONFIG, path)),
            tokenizer=_field(reader, names.GGUF_TOKENIZER, path, required=False),
            head_row_start=int(_field(reader, names.GGUF_HEAD_ROW_START, path)),
            head_bias=np.asarray(_field(reader, names.GGUF_HEAD_BIAS, path), dtype=np.float32),
            input_scale=float(_field(reader, names.GGUF_INPUT_SCALE, path)),
            qk_layout=_field(reader, names.GGUF_ROPE_LAYOUT, path),
            exactness=_verdicts(_field(reader, names.GGUF_EXACTNESS, path), path),
            tensor_types={t.name: t.tensor_type.name for t in reader.tensors},
            tensor_shapes={t.name: tuple(int(x) for x in reversed(t.shape)) for t in reader.tensors},
            _reader=reader,
        )

    @property
    def weight_types(self) -> set[str]:
        """Stored types of the tensors that hold weights (norm vectors are always F32)."""
        return {t for n, t in self.tensor_types.items() if len(self.tensor_shapes[n]) > 1}

    def llamacpp_verdicts(self, kv_type: str = "f32", state_problem: str = "") -> exactness.Verdicts:
        """What stock llama.cpp computes from this file, decided from the file's own facts (and, at run time,
        the KV type and the backend's state-format self-test)."""
        layout = self.layout
        return exactness.llamacpp_verdicts(self.arch, layout.hidden_act, layout.position_mode,
                                           layout.noncausal_masks, self.weight_types, kv_type, state_problem)

    def tensor(self, name: str) -> np.ndarray:
        """A tensor dequantized to float32, in numpy (row-major) shape."""
        import gguf

        for t in self._reader.tensors:
            if t.name == name:
                data = gguf.quants.dequantize(t.data, t.tensor_type)
                return np.asarray(data, dtype=np.float32).reshape(self.tensor_shapes[name])
        raise BadInput(f"GGUF has no tensor {name}", self.path)

    def token_embd(self) -> np.ndarray:
        """token_embd dequantized once: the input table and every head's rows are slices of it."""
        if self._token_embd is None:
            self._token_embd = self.tensor(tt.GGUF_TOKEN_EMBD)
        return self._token_embd

    def head_weights(self) -> dict[str, np.ndarray]:
        """Each head's weight rows [rows, d] (float32), from token_embd after the input table."""
        embd = self.token_embd()
        heads, row = {}, self.head_row_start
        for h in self.layout.heads:
            heads[h.name] = embd[row:row + h.rows]
            row += h.rows
        if row != embd.shape[0] or len(self.head_bias) != row - self.head_row_start:
            raise BadInput(f"token_embd has {embd.shape[0]} rows, the layout needs {row}", self.path)
        return heads

    def head_biases(self) -> dict[str, np.ndarray]:
        out, row = {}, 0
        for h in self.layout.heads:
            out[h.name] = self.head_bias[row:row + h.rows]
            row += h.rows
        return out

    def input_table(self) -> np.ndarray:
        return self.token_embd()[: self.head_row_start]
