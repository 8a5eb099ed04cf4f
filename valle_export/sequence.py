"""Row ids, positions and mask policy of every VALL-E pass, as numpy arrays (no torch).

A pass is a list of segments joined by the `sep` row (none after the last segment):

    phn <sep> lang <sep> rvq_level <sep> prompt <sep> output          (AR, NAR level q, NAR-len)
    phn <sep> lang <sep> rvq_level(0) <sep> prompt <sep> len-digits    (len)
    phn=[1,2] <sep> lang <sep> rvq_level(0) <sep> output               (NAR-len null / CFG input)
    phn <sep> lang <sep> rvq_level <sep> task prompt <sep> output      (ns / sr: task row, then the prompt, no sep)
    audio <sep> lang <sep> rvq_level(0) <sep> phn                      (stt: audio = AR table for level 0 plus
                                                                        NAR tables l+1 for levels 1..levels-2)

Each position is the SUM of one or more rows of the flat table (NAR passes sum the lower RVQ levels),
stored as `rows[L, K]` padded with -1. Positions restart at 0 in every segment (the trailing sep takes the
next number) in segmented mode, and run 0..L-1 in unified mode. The mask is causal by sequence INDEX, or
bidirectional for NAR / NAR-len passes of `noncausal_masks` models. The original counts only the prompt frames
of a task's prompt segment (not its task row) when it numbers positions, so every later position moves down by
one and the last one is padded with 1 (fixture mrq-lora, vall_e/models/base.py:986-990): reproduced here.
Imports: layout, names, numpy.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from . import names
from .errors import BadInput
from .layout import Layout

NEG_INF = float("-inf")


@dataclasses.dataclass(frozen=True)
class PassSpec:
    """One forward pass. Outputs are positions [out_start, L); their logits come from head `head`."""

    rows: np.ndarray  # int64 [L, K], -1 = unused slot
    positions: np.ndarray  # int64 [L]
    causal: bool
    head: str
    out_start: int
    segments: np.ndarray  # int8 [L], debug labels (see SEGMENT_*)

    @property
    def length(self) -> int:
        return int(self.rows.shape[0])

    @property
    def n_outputs(self) -> int:
        return self.length - self.out_start


SEGMENT_PHN, SEGMENT_LANG, SEGMENT_RVQ, SEGMENT_PROMPT, SEGMENT_RESP, SEGMENT_LEN, SEGMENT_SEP = 0, 1, 2, 3, 4, 5, 9
SEGMENT_TASK = 6
POSITION_PAD = 1  # the id the original pads a too-short position list with (task passes)


def _ids(layout: Layout, table: str, ids: np.ndarray) -> np.ndarray:
    """Flat row ids of native ids `ids` in `table`, checked against the table size."""
    t = layout.table(table)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= t.rows):
        raise BadInput(f"token id out of range for table {table!r} (0..{t.rows - 1}): {ids.min()}..{ids.max()}")
    return ids + t.start


def _summed(layout: Layout, tables: list[str], codes: np.ndarray) -> np.ndarray:
    """rows[T, len(tables)]: column l = codes[:, l] looked up in tables[l] (summed at embedding time)."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2 or codes.shape[1] < len(tables):
        raise BadInput(f"codes must be [frames, >= {len(tables)} levels], got shape {codes.shape}")
    columns = [_ids(layout, t, codes[:, level]) for level, t in enumerate(tables)]
    return np.stack(columns, axis=1).reshape(-1, len(tables))


def _assemble(layout: Layout, segments: list[tuple[np.ndarray, int]], head: str,
              labels_of: dict[int, np.ndarray] | None = None) -> PassSpec:
    """Join segments with sep, pad rows to a common width, compute positions and the output start.
    `labels_of[i]` overrides segment i's per-row labels; rows labelled SEGMENT_TASK are not counted by the
    position numbering (the original's quirk, see the module docstring)."""
    sep = np.array([[layout.table(names.TABLE_SEP).start]], dtype=np.int64)
    width = max(1, max(s.shape[1] for s, _ in segments))
    parts, labels, positions = [], [], []
    for i, (rows, label) in enumerate(segments):
        last = i == len(segments) - 1
        parts.append(rows)
        row_labels = (labels_of or {}).get(i, np.full(len(rows), label, np.int8))
        labels += list(row_labels)
        if not last:
            parts.append(sep)
            labels.append(SEGMENT_SEP)
        counted = int((row_labels != SEGMENT_TASK).sum())
        positions.append(np.arange(counted + (0 if last else 1), dtype=np.int64))
    padded = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=-1) for p in parts]
    rows = np.concatenate(padded, axis=0)
    if layout.position_mode == names.POSITIONS_UNIFIED:
        pos = np.arange(sum(len(p) for p in positions), dtype=np.int64)
    else:
        pos = np.concatenate(positions)
    pos = np.pad(pos, (0, len(rows) - len(pos)), constant_values=POSITION_PAD)
    out_len = len(segments[-1][0])
    return PassSpec(rows, pos, layout.is_causal(head), head, len(rows) - out_len, np.array(labels, dtype=np.int8))


Segments = tuple[list[tuple[np.ndarray, int]], dict[int, np.ndarray]]


def _prefix(layout: Layout, phn, lang: int, level: int, prompt, prompt_levels: int, task: int | None = None
            ) -> Segments:
    """phn, lang, rvq level and (when given) the prompt, with task row `task` in front of it (ns / sr): the
    segments and the per-row labels of a task prompt segment."""
    segs = [(_ids(layout, names.TABLE_TEXT, phn)[:, None], SEGMENT_PHN)]
    if layout.has_table(names.TABLE_LANG):
        segs.append((_ids(layout, names.TABLE_LANG, [lang])[:, None], SEGMENT_LANG))
    segs.append((_ids(layout, names.TABLE_RVQ, [level])[:, None], SEGMENT_RVQ))
    labels: dict[int, np.ndarray] = {}
    if prompt is not None:
        tables = [names.table_prompt(level) for level in range(prompt_levels)]
        rows = _summed(layout, tables, prompt)
        if task is not None:
            task_row = np.full((1, rows.shape[1]), -1, dtype=np.int64)
            task_row[0, 0] = _ids(layout, names.TABLE_TASK, [task])[0]
            rows = np.concatenate([task_row, rows])
            labels[len(segs)] = np.array([SEGMENT_TASK] + [SEGMENT_PROMPT] * (len(rows) - 1), np.int8)
        segs.append((rows, SEGMENT_PROMPT))
    return segs, labels


def ar_pass(layout: Layout, phn, lang: int, prompt, codes, task: int | None = None) -> PassSpec:
    """AR level 0 with `codes` (level-0 codes so far, may be empty): outputs = the prompt's trailing sep and
    every code position; output i predicts code i (the last one predicts the next code)."""
    segs, labels = _prefix(layout, phn, lang, 0, prompt, 1, task)
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    resp = (_ids(layout, names.HEAD_AR, codes)[:, None], SEGMENT_RESP)
    spec = _assemble(layout, segs + [resp], names.HEAD_AR, labels)
    return dataclasses.replace(spec, out_start=spec.out_start - 1)


def nar_pass(layout: Layout, phn, lang: int, prompt, resp, level: int, task: int | None = None) -> PassSpec:
    """NAR pass predicting RVQ `level` (1..levels-1) from resp[:, :level]: prompt and response sum levels
    0..level-1 (response level l goes through table l+1, not the AR table)."""
    if not 1 <= level < layout.audio_levels:
        raise BadInput(f"NAR level must be 1..{layout.audio_levels - 1}, got {level}")
    segs, labels = _prefix(layout, phn, lang, level, prompt, level, task)
    tables = [names.resp_name(below + 1, layout.audio_levels) for below in range(level)]
    head = names.head_nar(level)
    return _assemble(layout, segs + [(_summed(layout, tables, resp), SEGMENT_RESP)], head, labels)


def len_pass(layout: Layout, phn, lang: int, prompt, digits) -> PassSpec:
    """len pass over the len segment `digits` (starts with token 0); output j predicts token j+1."""
    segs, _ = _prefix(layout, phn, lang, 0, prompt, 1)
    digits = _ids(layout, names.TABLE_LEN, digits)[:, None]
    return _assemble(layout, segs + [(digits, SEGMENT_LEN)], names.HEAD_LEN)


def nar_len_pass(layout: Layout, phn, lang: int, prompt, resp_masked, task: int | None = None) -> PassSpec:
    """NAR-len demasking pass over level-0 codes with `mask_token` at masked frames. `prompt=None` (and
    phn=[bos, eos]) is the null input of classifier-free guidance (no prompt, hence no task row either)."""
    segs, labels = _prefix(layout, phn, lang, 0, prompt, 1, task)
    resp = _ids(layout, names.HEAD_NAR_LEN, resp_masked)[:, None]
    return _assemble(layout, segs + [(resp, SEGMENT_RESP)], names.HEAD_NAR_LEN, labels)


def stt_audio_tables(layout: Layout) -> list[str]:
    """Tables of the stt audio segment per level: AR table for level 0, table l+1 for levels 1..levels-2; the
    original leaves the last level out (`range(levels - 1)`, fixture mrq-lora)."""
    return [names.HEAD_AR] + [names.resp_name(level + 1, layout.audio_levels)
                              for level in range(1, layout.audio_levels - 1)]


def stt_pass(layout: Layout, audio, lang: int, phn) -> PassSpec:
    """stt over audio codes [frames, levels] with the phonemes so far (bos first): causal, head `stt` (row j
    predicts phoneme j+1). The original at 73833ee applies no head here (a regression since 2ea387c); the
    designed head 9 is used (README)."""
    audio_rows = (_summed(layout, stt_audio_tables(layout), audio), SEGMENT_RESP)
    segs = [audio_rows]
    if layout.has_table(names.TABLE_LANG):
        segs.append((_ids(layout, names.TABLE_LANG, [lang])[:, None], SEGMENT_LANG))
    segs.append((_ids(layout, names.TABLE_RVQ, [0])[:, None], SEGMENT_RVQ))
    segs.append((_ids(layout, names.TABLE_TEXT, phn)[:, None], SEGMENT_PHN))
    return _assemble(layout, segs, names.HEAD_STT)


def null_phonemes(layout: Layout) -> np.ndarray:
    return np.array([layout.bos_token, layout.eos_token], dtype=np.int64)


def extend(layout: Layout, spec: PassSpec, table: str, ids) -> PassSpec:
    """`spec` with tokens of `table` appended to its output segment (the next AR code, the next len digit).
    Not for task passes: there the original's positions of earlier tokens change as the output grows."""
    if (spec.segments == SEGMENT_TASK).any():
        raise ValueError("a task pass cannot be extended (its earlier positions move): rebuild it")
    ids = _ids(layout, table, ids)
    new = np.full((len(ids), spec.rows.shape[1]), -1, dtype=spec.rows.dtype)  # one flat row per new position
    new[:, 0] = ids
    if layout.position_mode == names.POSITIONS_UNIFIED:
        start = spec.length
    else:
        start = int(spec.positions[-1]) + 1 if spec.segments[-1] != SEGMENT_SEP else 0
    pos = np.arange(start, start + len(new), dtype=np.int64)
    seg = {names.TABLE_LEN: SEGMENT_LEN, names.TABLE_TEXT: SEGMENT_PHN}.get(table, SEGMENT_RESP)
    return dataclasses.replace(
        spec,
        rows=np.concatenate([spec.rows, new]),
        positions=np.concatenate([spec.positions, pos]),
        segments=np.concatenate([spec.segments, np.full(len(new), seg, np.int8)]),
    )


def attention_allowed(causal: bool, q_len: int, past: int = 0) -> np.ndarray:
    """bool [q_len, past + q_len]: True where query i (sequence index past+i) may attend key j."""
    total = past + q_len
    if not causal:
        return np.ones((q_len, total), dtype=bool)
    return np.arange(total)[None, :] <= (past + np.arange(q_len))[:, None]


def additive_mask(causal: bool, q_len: int, past: int = 0, dtype=np.float32) -> np.ndarray:
    """Additive mask [1, 1, q_len, past + q_len]: 0 where allowed, -inf elsewhere."""
    allowed = attention_allowed(causal, q_len, past)
    return np.where(allowed, 0.0, NEG_INF).astype(dtype)[None, None]


def embed(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Sum of flat-table rows per position, left to right as the original sums levels: [L, d]."""
    out = table[np.maximum(rows[:, 0], 0)].copy()
    for k in range(1, rows.shape[1]):
        used = rows[:, k] >= 0
        out[used] += table[rows[used, k]]
    return out
