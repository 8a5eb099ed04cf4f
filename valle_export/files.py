"""Atomic output (temp file or folder, then rename) and safetensors header reading without torch.

Every writer in the project goes through `atomic_path` / `atomic_dir`, so an interrupted or failed export
never leaves a half-written file under the final name. Temp names are `.<final>.<pid>.<random>.tmp`: the
pid lets the next write to the same place remove what a killed writer left behind (`sweep_stale_temps`),
without touching the temp of a writer that is still running. Imports: errors, paths, stdlib.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Iterator

from .errors import BadCheckpoint, ValleExportError, raise_if_interrupted
from .paths import check_parent

TEMP_SUFFIX = ".tmp"
STALE_TEMP_SECONDS = 3600  # a temp of ours without a readable pid is stale after this long


def _public_mode(is_dir: bool = False) -> int:
    """The mode a plain `open()` would give (temp files are created 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if is_dir else 0o666) & ~umask


def _temp_prefix(final: Path) -> str:
    """Prefix of our temps for `final`, with this process's pid (read back by `_temp_owner`)."""
    return f".{final.name}.{os.getpid()}."


def _temp_owner(name: str, final: Path) -> int | None:
    """The pid encoded in a temp name of ours for `final`, or None (an older name without one)."""
    middle = name[len(f".{final.name}."):-len(TEMP_SUFFIX)]
    pid, _, rest = middle.partition(".")
    return int(pid) if pid.isdigit() and rest else None


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _is_stale(entry: Path, final: Path) -> bool:
    """A temp whose writer is dead, or (no pid in its name) that is older than `STALE_TEMP_SECONDS`."""
    pid = _temp_owner(entry.name, final)
    if pid is not None:
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        return time.time() - entry.lstat().st_mtime > STALE_TEMP_SECONDS
    except OSError:
        return False


def sweep_stale_temps(final: str | os.PathLike) -> list[Path]:
    """Remove temps of ours beside `final` left by an interrupted writer (killed before its cleanup ran).
    Returns what was removed. Never raises: a temp we cannot remove is left for the next write."""
    final = Path(final)
    removed = []
    prefix = f".{final.name}."
    try:
        entries = [e for e in final.parent.iterdir() if e.name.startswith(prefix) and e.name.endswith(TEMP_SUFFIX)]
    except OSError:
        return removed
    for entry in entries:
        if not _is_stale(entry, final):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def _library_io_error(err: Exception) -> OSError | None:
    """safetensors reports a failed write as `SafetensorError("... I/O error: <strerror> (os error N)")`,
    not as an OSError: recover the OSError so that it gets the same one line."""
    text = str(err)
    if type(err).__name__ != "SafetensorError" or "I/O error: " not in text:
        return None
    strerror = text.split("I/O error: ", 1)[1].split(" (os error", 1)[0]
    return OSError(None, strerror)


def _write_error(err: OSError, tmp: Path | None, final: Path) -> ValleExportError:
    """An OS error inside a write as one line: naming the path the user gave (not our temp name) when it
    concerns the output, else the file it concerns (an input read during the export)."""
    name = err.filename
    problem = err.strerror or type(err).__name__
    if name is not None and (tmp is None or not os.fspath(name).startswith(os.fspath(tmp))) \
            and Path(os.fspath(name)) != final:
        return ValleExportError(problem, name)
    return ValleExportError(f"cannot write ({problem})", final)


@contextlib.contextmanager
def _as_write_errors(tmp: Path, final: Path) -> Iterator[None]:
    """OS errors (and safetensors' wrapped ones) inside a write become one `ValleExportError` line."""
    try:
        yield
    except OSError as err:
        raise _write_error(err, tmp, final) from None
    except Exception as err:
        io_error = _library_io_error(err)
        if io_error is None:
            raise
        raise _write_error(io_error, tmp, final) from None


def _prepare_parent(final: Path) -> None:
    """Create the parent folders of `final` and remove stale temps beside it (OS errors: one line)."""
    check_parent(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(err, None, final) from None
    sweep_stale_temps(final)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `final`; on success rename it over `final`, on failure remove it."""
    final = Path(final)
    if final.is_dir():
        raise ValleExportError("is a folder, expected a file", final)
    _prepare_parent(final)
    try:
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(final), suffix=TEMP_SUFFIX, dir=final.parent)
    except OSError as err:
        raise _write_error(err, None, final) from None
    os.close(fd)
    tmp = Path(name)
    try:
        with _as_write_errors(tmp, final):
            yield tmp
            raise_if_interrupted()
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
    _prepare_parent(final)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=TEMP_SUFFIX, dir=final.parent))
    except OSError as err:
        raise _write_error(err, None, final) from None
    try:
        with _as_write_errors(tmp, final):
            yield tmp
            raise_if_interrupted()
            final.mkdir(exist_ok=True)
            for item in sorted(tmp.iterdir()):
                os.chmod(item, _public_mode(item.is_dir()))
                os.replace(item, final / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                           "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _entry_problem(name: str, entry) -> str | None:
    """What is wrong with one tensor entry of a safetensors header (dtype, shape, offsets), or None."""
    if not isinstance(entry, dict):
        return f"tensor {name!r}: entry is not an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPE_BYTES:
        return f"tensor {name!r}: unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        return f"tensor {name!r}: shape {shape!r} is not a list of sizes"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        return f"tensor {name!r}: data_offsets {offsets!r} are not two increasing byte offsets"
    count = 1
    for d in shape:
        count *= d
    if offsets[1] - offsets[0] != count * SAFETENSORS_DTYPE_BYTES[dtype]:
        return f"tensor {name!r}: data_offsets span {offsets[1] - offsets[0]} bytes, shape {shape} {dtype} " \
               f"needs {count * SAFETENSORS_DTYPE_BYTES[dtype]}"
    return None


def _check_header(header, path: Path) -> None:
    """Every entry well formed and `__metadata__` a string map: the safetensors library would otherwise
    fail later with a message that does not name the file."""
    if not isinstance(header, dict):
        raise BadCheckpoint("not a safetensors file (header is not an object)", path)
    meta = header.get("__metadata__", {})
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise BadCheckpoint("not a safetensors file (__metadata__ is not a map of strings)", path)
    for name, entry in header.items():
        problem = None if name == "__metadata__" else _entry_problem(name, entry)
        if problem:
            raise BadCheckpoint(f"corrupt safetensors header ({problem})", path)


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
    except IsADirectoryError:
        raise BadCheckpoint("is a folder, expected a safetensors file", path) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadCheckpoint("not a safetensors file (header is not JSON)", path) from None
    _check_header(header, path)
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise BadCheckpoint(f"truncated file ({size} bytes, tensors need {8 + n + end})", path)
    return header
