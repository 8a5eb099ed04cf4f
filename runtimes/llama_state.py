"""Parse and relabel one sequence's saved KV state of stock llama.cpp (`llama_state_seq_get_data`).

Why: restoring a sequence's state (`llama_state_seq_set_data`) takes every cell's position from the blob as
given and leaves K and V untouched. It is the one public path that moves a cell's position without rotating
its key again, which is what lets restarting (segmented) positions run as cached causal passes on any
non-M-RoPE arch (design.md 3b, "relabelling"). The blob is not a documented format, so it is parsed to its
exact end and anything unexpected raises `StateFormatError`; the backend then refuses the causal passes.

Layout (llama.cpp 0c1e570 and b11434; plain KV cache, one stream, one sequence id per cell):
    u32 magic 0xaf143cd8 | i32 seq_id | u32 n_stream (1) | u32 cell_count
    | cell_count x {i32 pos | u32 n_seq_id (1) | i32 seq_id}
    | u32 v_trans | u32 n_layer | n_layer x {i32 k_type | u64 k_row | cell_count * k_row bytes}
    | v_trans 0: n_layer x {i32 v_type | u64 v_row | cell_count * v_row bytes}
    | v_trans 1: n_layer x {i32 v_type | u32 el_size | u32 n_embd_v | n_embd_v * cell_count * el_size bytes}
"""
from __future__ import annotations

import dataclasses
import struct

import numpy as np

STATE_MAGIC = 0xAF143CD8
HEADER = struct.Struct("<IiII")  # magic, seq_id, n_stream, cell_count
CELL = np.dtype([("pos", "<i4"), ("n_seq_id", "<u4"), ("seq_id", "<i4")])
MAX_LAYERS = 4096


class StateFormatError(Exception):
    """The saved sequence state is not laid out as this module expects (another llama.cpp version)."""


@dataclasses.dataclass(frozen=True)
class SeqState:
    """Where the cell records of a parsed blob lie (the only part relabelling writes)."""

    seq_id: int
    cell_count: int
    cells_offset: int
    n_layer: int
    v_trans: bool

    def cells(self, blob) -> np.ndarray:
        """A writable structured view of the cell records inside `blob` (no copy)."""
        return np.frombuffer(blob, dtype=CELL, count=self.cell_count, offset=self.cells_offset)


def _read(fmt: str, blob, offset: int, what: str) -> tuple[tuple, int]:
    size = struct.calcsize(fmt)
    if offset + size > len(blob):
        raise StateFormatError(f"state ends inside {what} (offset {offset}, {len(blob)} bytes)")
    return struct.unpack_from(fmt, blob, offset), offset + size


def _skip(blob, offset: int, nbytes: int, what: str) -> int:
    if nbytes < 0 or offset + nbytes > len(blob):
        raise StateFormatError(f"{what} needs {nbytes} bytes at offset {offset}, the state has {len(blob)}")
    return offset + nbytes


def parse(blob, seq_id: int = 0) -> SeqState:
    """Check the whole blob and return where its cells are; raises StateFormatError on any difference."""
    (magic, blob_seq, n_stream, cell_count), offset = _read("<IiII", blob, 0, "the header")
    if magic != STATE_MAGIC:
        raise StateFormatError(f"magic {magic:#x} != {STATE_MAGIC:#x}")
    if blob_seq != seq_id or n_stream != 1:
        raise StateFormatError(f"sequence {blob_seq} with {n_stream} streams (expected {seq_id}, one stream)")
    if cell_count == 0:
        raise StateFormatError("the sequence has no cells")
    cells_offset = offset
    offset = _skip(blob, offset, cell_count * CELL.itemsize, "the cell records")
    cells = np.frombuffer(blob, dtype=CELL, count=cell_count, offset=cells_offset)
    if np.any(cells["n_seq_id"] != 1) or np.any(cells["seq_id"] != seq_id):
        raise StateFormatError("a cell record is not {pos, 1, seq_id} (cell extras or shared cells)")
    (v_trans, n_layer), offset = _read("<II", blob, offset, "the data header")
    if v_trans not in (0, 1) or not 0 < n_layer <= MAX_LAYERS:
        raise StateFormatError(f"v_trans {v_trans}, n_layer {n_layer}")
    for layer in range(n_layer):
        (_, row), offset = _read("<iQ", blob, offset, f"K header of layer {layer}")
        offset = _skip(blob, offset, cell_count * row, f"K of layer {layer}")
    for layer in range(n_layer):
        if v_trans:
            (_, el_size, n_embd_v), offset = _read("<iII", blob, offset, f"V header of layer {layer}")
            offset = _skip(blob, offset, n_embd_v * cell_count * el_size, f"V of layer {layer}")
        else:
            (_, row), offset = _read("<iQ", blob, offset, f"V header of layer {layer}")
            offset = _skip(blob, offset, cell_count * row, f"V of layer {layer}")
    if offset != len(blob):
        raise StateFormatError(f"{len(blob) - offset} bytes after the last layer")
    return SeqState(seq_id, cell_count, cells_offset, n_layer, bool(v_trans))


def relabel(blob, state: SeqState, position: int) -> None:
    """Set every cell of the parsed blob to `position` in place (K and V bytes untouched)."""
    state.cells(blob)["pos"] = position
