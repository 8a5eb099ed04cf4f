"""What a folder is (checkpoint, uniform, ONNX export, codec) and whether an output path is safe to write.

Every writer command calls `check_output` before any work, so a bad output path costs nothing and can never
overwrite an input: the path is not empty, its parent is (or can become) a folder, a file output is not an
existing folder and a folder output is not an existing file, it resolves to none of the inputs (nor to an
existing file inside an input folder), and an export folder is never a checkpoint folder nor inside one.
Imports: errors, names, graphs, stdlib.
"""
from __future__ import annotations

import enum
import json
import os
from pathlib import Path
from typing import Iterable

from . import names
from .errors import BadInput

CODEC_FILES = ("encodec_encoder.onnx", "encodec_decoder.onnx", "vocos_decoder.onnx")
# Files that make a folder a model (read by some command): never overwritten when their folder is an input.
# Anything else in an input folder (a WAV, a GGUF written beside a checkpoint) may be replaced.
MODEL_FILE_NAMES = frozenset({names.CHECKPOINT_SFT, names.CHECKPOINT_PTH, names.TOKENIZER_FILE,
                              names.HF_CONFIG_FILE, "model.safetensors", "model.safetensors.index.json",
                              "generation_config.json", "preprocessor_config.json"})
MODEL_FILE_SUFFIXES = (".onnx", ".onnx.data")


class FolderKind(str, enum.Enum):
    """The folders this tool reads or writes, told apart by the files that define them."""

    CHECKPOINT = "a checkpoint folder"  # fp32.sft / fp32.pth of the original
    UNIFORM = "a uniform folder"  # `valle-export convert`: config.json + model.safetensors + valle_layout.json
    ONNX = "an ONNX export folder"  # `valle-export onnx`: backbone*.onnx + valle_layout.json
    CODEC = "an EnCodec ONNX folder"  # `valle-export encodec` / `vocos` alone: encodec_*.onnx, vocos_decoder.onnx
    HF_CODEC = "a transformers EnCodec folder"  # config.json with model_type "encodec"
    EMPTY = "an empty folder"
    OTHER = "a folder"


def hf_model_type(folder: Path) -> str | None:
    """`model_type` of a transformers config.json, or None when there is none or it is unreadable."""
    try:
        value = json.loads((folder / names.HF_CONFIG_FILE).read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def folder_kind(folder: str | os.PathLike) -> FolderKind:
    """The kind of an existing folder (checkpoint first: its files decide what every command may do)."""
    folder = Path(folder)
    files = {p.name for p in folder.iterdir()}
    if names.CHECKPOINT_SFT in files or names.CHECKPOINT_PTH in files:
        return FolderKind.CHECKPOINT
    if names.LAYOUT_FILE in files and any(f.startswith("backbone") and f.endswith(".onnx") for f in files):
        return FolderKind.ONNX
    if names.LAYOUT_FILE in files and names.HF_CONFIG_FILE in files:
        return FolderKind.UNIFORM
    if any(f in files for f in CODEC_FILES):
        return FolderKind.CODEC
    if names.HF_CONFIG_FILE in files and hf_model_type(folder) == "encodec":
        return FolderKind.HF_CODEC
    if not {f for f in files if not f.startswith(".")}:
        return FolderKind.EMPTY
    return FolderKind.OTHER


def is_model_file(path: Path) -> bool:
    """Whether `path` names a file that some command reads as (part of) a model or codec."""
    name = path.name
    return (name in MODEL_FILE_NAMES or name.startswith("valle_") or name.endswith(MODEL_FILE_SUFFIXES)
            or (name.startswith("model-") and name.endswith(".safetensors")))


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or below it (both resolved)."""
    return path == folder or folder in path.parents


def check_parent(out: Path) -> None:
    """The nearest existing ancestor of `out` must be a writable folder (missing folders get created)."""
    for ancestor in out.absolute().parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise BadInput(f"cannot write here: {ancestor} is a file, not a folder", out)
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise BadInput(f"cannot write here: folder {ancestor} is not writable", out)
            return


def _check_inputs(given: Path, inputs: Iterable[Path], folder_output: bool) -> None:
    """`out` must not be an input, nor an existing model file inside an input folder. (A folder export into a
    folder that holds an input file is fine: exports write only their own file names.)"""
    out = given.resolve()
    for source in inputs:
        src = Path(source).resolve()
        if out == src:
            raise BadInput(f"output is the input {source}; choose another path", given)
        if src.is_dir() and _inside(out, src):
            if out.exists() and not out.is_dir() and is_model_file(out):
                raise BadInput(f"would overwrite a model file of the input folder {source}", given)


def _is_checkpoint_folder(folder: Path) -> bool:
    """Cheap test (two stats, no listing) used on every ancestor of an output folder."""
    return (folder / names.CHECKPOINT_SFT).is_file() or (folder / names.CHECKPOINT_PTH).is_file()


def _check_not_in_checkpoint(given: Path) -> None:
    """A folder export is never written inside a checkpoint folder: it would mix exported files into the
    checkpoint's folder and change what that folder is to every later command."""
    for ancestor in given.absolute().parents:
        if _is_checkpoint_folder(ancestor):
            raise BadInput(f"an export is never written inside the checkpoint folder {ancestor}", given)


def check_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), *,
                 folder: bool = False, refused_kinds: Iterable[FolderKind] = (FolderKind.CHECKPOINT,)) -> Path:
    """Refuse an output path before any work (see the module docstring); returns it. `folder`: the output
    is a folder (its existing kind must not be in `refused_kinds`), else a file."""
    if not os.fspath(out).strip():
        raise BadInput("output path is empty")
    given = Path(out)
    if folder and given.exists() and not given.is_dir():
        raise BadInput("exists and is not a folder (the output is a folder)", given)
    if not folder and given.is_dir():
        raise BadInput("is a folder, expected a file", given)
    check_parent(given)
    _check_inputs(given, [Path(i) for i in inputs if i is not None], folder)
    refused_kinds = tuple(refused_kinds)
    if folder and given.is_dir():
        kind = folder_kind(given)
        if kind in refused_kinds:
            raise BadInput(f"is {kind.value}; write the export to another folder", given)
    if folder and FolderKind.CHECKPOINT in refused_kinds:
        _check_not_in_checkpoint(given)
    return given
