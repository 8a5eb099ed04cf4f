"""`Layout`: the uniform-ID row ranges of every input table and every head, computed from `ValleConfig`.

The uniform model has ONE flat embedding matrix (every native table stacked) and ONE output matrix whose
rows are the native heads placed over the range of the table they predict, so it is an ordinary
`LlamaForCausalLM`. For the released model the flat table has 17,702 rows:
text 0-256, rvq 256-264, lang 264-270, task 270-279, len 279-290, tone 290-291, sep 291-292,
prompt level l at 292+1024l, AR 8484-9509, NAR tables 1..7 at 9509+1024(l-1), NAR-len 16677-17702.
Nothing here is hard-coded: every range follows from the config. Converters and runtimes read sizes and
ranges only from a `Layout` (saved as JSON beside or inside every exported file). Imports: config, names.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from . import names
from .codec_spec import ENCODEC
from .config import ValleConfig
from .errors import BadInput

FRAME_RATE = ENCODEC.frame_rate  # EnCodec 24 kHz frames per second
SAMPLE_RATE = ENCODEC.sample_rate
LEN_TOKENS = 11  # digits 0-9, stop 10


@dataclasses.dataclass(frozen=True)
class TableRange:
    """Rows [start, start + rows) of the flat table hold native tensor `source`."""

    name: str
    start: int
    rows: int
    source: str

    @property
    def stop(self) -> int:
        return self.start + self.rows


@dataclasses.dataclass(frozen=True)
class HeadRange:
    """Native head `classifiers.proj.{index}` placed at rows [start, start + rows) of the stacked head."""

    name: str
    index: int
    table: str
    start: int
    rows: int
    has_bias: bool

    @property
    def stop(self) -> int:
        return self.start + self.rows


@dataclasses.dataclass(frozen=True)
class Layout:
    """Everything a runtime needs to assemble inputs and pick heads, and nothing that needs torch."""

    vocab_size: int
    hidden_size: int
    audio_levels: int
    audio_tokens: int
    tables: tuple[TableRange, ...]
    heads: tuple[HeadRange, ...]
    position_mode: str
    noncausal_masks: bool
    hidden_act: str
    capabilities: tuple[str, ...]
    dropped: tuple[tuple[str, str], ...] = ()  # (native name, why it is not in the uniform form)
    bos_token: int = 1
    eos_token: int = 2
    len_stop_token: int = 10
    frame_rate: int = FRAME_RATE
    sample_rate: int = SAMPLE_RATE

    # --- lookups -----------------------------------------------------------------------------------
    @property
    def stop_token(self) -> int:
        """AR stop code (row `audio_tokens` of the AR table)."""
        return self.audio_tokens

    @property
    def mask_token(self) -> int:
        """NAR-len mask code (row `audio_tokens` of the NAR-len table)."""
        return self.audio_tokens

    def table(self, name: str) -> TableRange:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(f"layout has no table {name!r}")

    def head(self, name: str) -> HeadRange:
        for h in self.heads:
            if h.name == name:
                return h
        raise KeyError(f"layout has no head {name!r}")

    def has_table(self, name: str) -> bool:
        return any(t.name == name for t in self.tables)

    def is_causal(self, head: str) -> bool:
        """Mask policy of the original: with `noncausal_masks`, only AR and len (and stt) passes are causal."""
        if not self.noncausal_masks:
            return True
        return head in (names.HEAD_AR, names.HEAD_LEN, names.HEAD_STT)

    # --- JSON ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["schema"] = names.LAYOUT_SCHEMA
        d["schema_version"] = names.LAYOUT_SCHEMA_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "layout") -> "Layout":
        if d.get("schema") != names.LAYOUT_SCHEMA or d.get("schema_version") != names.LAYOUT_SCHEMA_VERSION:
            raise BadInput(f"not a valle-export layout of schema version {names.LAYOUT_SCHEMA_VERSION}", source)
        fields = {f.name for f in dataclasses.fields(cls)}
        try:
            kw = {k: v for k, v in d.items() if k in fields}
            kw["tables"] = tuple(TableRange(**t) for t in d["tables"])
            kw["heads"] = tuple(HeadRange(**h) for h in d["heads"])
            kw["capabilities"] = tuple(d["capabilities"])
            kw["dropped"] = tuple(tuple(x) for x in d.get("dropped", ()))
            layout = cls(**kw)
        except (KeyError, TypeError, ValueError) as err:
            raise BadInput(f"layout JSON is incomplete ({err})", source) from None
        problem = layout.problem()
        if problem:
            raise BadInput(f"inconsistent layout ({problem})", source)
        return layout

    def problem(self) -> str | None:
        """What makes this layout unusable (wrong types, ranges outside the vocabulary, sizes <= 0), or None.
        A layout read from a file is checked before any array is sized from it."""
        ints = {"vocab_size": self.vocab_size, "hidden_size": self.hidden_size, "audio_levels": self.audio_levels,
                "audio_tokens": self.audio_tokens}
        for key, value in ints.items():
            if type(value) is not int or value <= 0:
                return f"{key} {value!r} is not a positive integer"
        for r in (*self.tables, *self.heads):
            if type(r.start) is not int or type(r.rows) is not int or r.start < 0 or r.rows <= 0 \
                    or r.stop > self.vocab_size:
                return f"{r.name} rows {r.start!r}+{r.rows!r} outside the vocabulary of {self.vocab_size}"
        return None

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "layout") -> "Layout":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise BadInput(f"layout is not valid JSON ({err.msg})", source) from None
        except (ValueError, RecursionError):
            raise BadInput("layout is not valid JSON (not UTF-8 text)", source) from None
        if not isinstance(d, dict):
            raise BadInput("layout is not a JSON object", source)
        return cls.from_dict(d, source)


def _native_tables(cfg: ValleConfig) -> list[tuple[str, int, str]]:
    """(uniform name, rows, native tensor) in flat-table order."""
    tables = [(names.TABLE_TEXT, cfg.phoneme_tokens, names.NATIVE_TEXT),
              (names.TABLE_RVQ, cfg.resp_levels, names.NATIVE_RVQ)]
    if cfg.langs > 0:
        tables.append((names.TABLE_LANG, cfg.langs, names.NATIVE_LANGS))
    if cfg.tasks > 0:
        tables.append((names.TABLE_TASK, cfg.tasks, names.NATIVE_TASKS))
    tables.append((names.TABLE_LEN, LEN_TOKENS, names.NATIVE_LEN))
    if cfg.tones > 0:
        tables.append((names.TABLE_TONE, cfg.tones, names.NATIVE_TONES))
    tables.append((names.TABLE_SEP, 1, names.NATIVE_SEP))
    tables += [(names.table_prompt(level), cfg.audio_tokens, names.native_prompt_table(level))
               for level in range(cfg.resp_levels)]
    # response tables: 0 = AR (codes + stop), 1..levels-1 = NAR, levels = NAR-len (codes + mask)
    for i in range(cfg.resp_levels + 1):
        rows = cfg.audio_tokens + (1 if i in (0, cfg.resp_levels) else 0)
        tables.append((names.resp_name(i, cfg.resp_levels), rows, names.native_resp_table(i)))
    return tables


def _native_heads(cfg: ValleConfig) -> list[tuple[str, int, str, int]]:
    """(head name, native index, table it predicts over, rows) in the original's classifier order."""
    levels = cfg.resp_levels
    heads = [(names.resp_name(0, levels), 0, names.resp_name(0, levels), cfg.audio_tokens + 1)]
    heads += [(names.resp_name(i, levels), i, names.resp_name(i, levels), cfg.audio_tokens) for i in range(1, levels)]
    heads.append((names.HEAD_NAR_LEN, levels, names.HEAD_NAR_LEN, cfg.audio_tokens))
    heads.append((names.HEAD_STT, levels + 1, names.TABLE_TEXT, cfg.phoneme_tokens))
    if cfg.has_len:
        heads.append((names.HEAD_LEN, levels + 2, names.TABLE_LEN, LEN_TOKENS))
    return heads


def layout_from_config(cfg: ValleConfig) -> Layout:
    """Compute every row range from the config (see module docstring for the released model's numbers)."""
    tables, start = [], 0
    for name, rows, source in _native_tables(cfg):
        tables.append(TableRange(name, start, rows, source))
        start += rows
    by_name = {t.name: t for t in tables}
    heads = tuple(HeadRange(name, index, table, by_name[table].start, rows, cfg.classifiers_bias)
                  for name, index, table, rows in _native_heads(cfg))
    dropped = [(names.NATIVE_RAW_TEXT, "raw-text input table, unused by TTS passes"),
               (names.NATIVE_DROPOUT_TOKEN, "training-only dropout token")]
    if cfg.version >= 6:
        n_heads = len(heads)
        dropped.append((names.native_head_weight(n_heads), "raw-text head, unused by TTS passes"))
    return Layout(
        vocab_size=start,
        hidden_size=cfg.d_model,
        audio_levels=cfg.resp_levels,
        audio_tokens=cfg.audio_tokens,
        tables=tuple(tables),
        heads=heads,
        position_mode=cfg.position_mode,
        noncausal_masks=cfg.noncausal_masks,
        hidden_act=cfg.hidden_act,
        capabilities=tuple(dict.fromkeys(cfg.capabilities)),
        dropped=tuple(dropped),
    )
