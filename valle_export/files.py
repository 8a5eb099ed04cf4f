"""Atomic output (temp file or folder, then rename) and safetensors header reading without torch.

Every writer in the project goes through `atomic_path` / `atomic_dir`, so an interrupted or failed export
never leaves a half-written file under the final name. Imports: errors, stdlib.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import BadCheckpoint, ValleExportError


def _public_mode(is_dir: bool = False) -> int:
    """The mode a plain `open()` would give (temp files are created 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if is_dir else 0o666) & ~umask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `final`; on success rename it over `final`, on failure remove it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, _public_mode())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success move its files into `final` (each by rename)."""
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise ValleExportError("exists and is not a folder", final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        final.mkdir(exist_ok=True)
        for item in sorted(tmp.iterdir()):
            os.chmod(item, _public_mode(item.is_dir()))
            os.replace(item, final / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file (tensor table + `__metadata__`), checked for sanity."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise BadCheckpoint("not a safetensors file (shorter than its 8-byte header length)", path)
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100 << 20):
                raise BadCheckpoint("not a safetensors file (header length beyond end of file)", path)
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise BadCheckpoint("file not found", path) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadCheckpoint("not a safetensors file (header is not JSON)", path) from None
    if not isinstance(header, dict):
        raise BadCheckpoint("not a safetensors file (header is not an object)", path)
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise BadCheckpoint(f"truncated file ({size} bytes, tensors need {8 + n + end})", path)
    return header
