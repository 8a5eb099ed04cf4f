"""The encodec.cpp weight file (PABannier/encodec.cpp and forks): its layout, the table of tensors its
loader expects, and a reader (numpy, no torch).

    int32 magic 0x67676d6c ('ggml')
    int32 x 9   in_channels 1, hidden_dim 128, n_filters 32, kernel_size 7, residual_kernel_size 3,
                n_bins 1024, bandwidth (kbps; the loader derives its default codebook count from it),
                sample_rate 24000, ftype (0 = f32, 1 = f16: the type of conv / LSTM weights)
    then, until end of file, one record per tensor:
    int32 n_dims, int32 name_length, int32 ggml_type (0 f32, 1 f16), int32 x n_dims dims innermost-first,
    name bytes (utf-8, no terminator), raw data (row-major, so innermost dim first = numpy's last axis)

Weight norm is folded into `<prefix>.weight`. Conv / LSTM weights are f16 only when ftype is f16; biases and
codebooks are always f32. The 120 tensors are the encoder (44), the decoder (44) and 32 codebooks; the
training-only `inited`, `cluster_size`, `embed_avg` are left out.
"""
from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np

from .codec_spec import ENCODEC
from .errors import BadInput

MAGIC = 0x67676D6C
F32, F16 = 0, 1
TYPE_NAMES = {F32: "f32", F16: "f16"}
DTYPES = {F32: np.dtype("<f4"), F16: np.dtype("<f2")}


@dataclasses.dataclass(frozen=True)
class Hparams:
    in_channels: int = 1
    hidden_dim: int = 128
    n_filters: int = 32
    kernel_size: int = 7
    residual_kernel_size: int = 3
    n_bins: int = ENCODEC.bins
    bandwidth: int = 6
    sample_rate: int = ENCODEC.sample_rate
    ftype: int = F16

    RATIOS = (8, 5, 4, 2)
    N_Q = 32
    LSTM_LAYERS = 2

    def pack(self) -> bytes:
        return struct.pack("<I9i", MAGIC, *dataclasses.astuple(self))


def expected_tensors(h: Hparams) -> dict[str, tuple[int, tuple[int, ...]]]:
    """name -> (ggml type, dims innermost-first), exactly as encodec.cpp's loader creates them."""
    w, k, rk, nf, hd = h.ftype, h.kernel_size, h.residual_kernel_size, h.n_filters, h.hidden_dim
    t: dict[str, tuple[int, tuple[int, ...]]] = {}

    def conv(name: str, dims: tuple[int, ...], out: int) -> None:
        t[f"{name}.weight"] = (w, dims)
        t[f"{name}.bias"] = (F32, (out,))

    def lstm(prefix: str, width: int) -> None:
        for layer in range(h.LSTM_LAYERS):
            for kind in ("ih", "hh"):
                t[f"{prefix}.lstm.weight_{kind}_l{layer}"] = (w, (width, 4 * width))
                t[f"{prefix}.lstm.bias_{kind}_l{layer}"] = (F32, (4 * width,))

    mult = 1
    conv("encoder.model.0.conv.conv", (k, h.in_channels, nf), nf)
    for i in range(4):
        c, b = mult * nf, 3 * i + 1
        conv(f"encoder.model.{b}.block.1.conv.conv", (rk, c, c // 2), c // 2)
        conv(f"encoder.model.{b}.block.3.conv.conv", (1, c // 2, c), c)
        conv(f"encoder.model.{b}.shortcut.conv.conv", (1, c, c), c)
        conv(f"encoder.model.{3 * (i + 1)}.conv.conv", (2 * h.RATIOS[3 - i], c, 2 * c), 2 * c)
        mult *= 2
    lstm("encoder.model.13", mult * nf)
    conv("encoder.model.15.conv.conv", (k, mult * nf, hd), hd)
    mult = 16
    conv("decoder.model.0.conv.conv", (k, hd, mult * nf), mult * nf)
    lstm("decoder.model.1", mult * nf)
    for i in range(4):
        c, b = mult * nf, 3 * (i + 1)
        conv(f"decoder.model.{b}.convtr.convtr", (2 * h.RATIOS[i], c // 2, c), c // 2)
        conv(f"decoder.model.{b + 1}.block.1.conv.conv", (rk, c // 2, c // 4), c // 4)
        conv(f"decoder.model.{b + 1}.block.3.conv.conv", (1, c // 4, c // 2), c // 2)
        conv(f"decoder.model.{b + 1}.shortcut.conv.conv", (1, c // 2, c // 2), c // 2)
        mult //= 2
    conv("decoder.model.15.conv.conv", (k, nf, h.in_channels), h.in_channels)
    for q in range(h.N_Q):
        t[f"quantizer.vq.layers.{q}._codebook.embed"] = (F32, (hd, h.n_bins))
    return t


@dataclasses.dataclass
class EncodecCppFile:
    hparams: Hparams
    tensors: dict[str, np.ndarray]  # numpy shape = dims reversed
    types: dict[str, int]


def read_encodec_cpp(path: str | Path, check_table: bool = True) -> EncodecCppFile:
    """Parse the whole file; every problem is one BadInput naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput("file not found", path) from None
    if len(data) < 40:
        raise BadInput(f"truncated encodec.cpp file ({len(data)} bytes, the header needs 40)", path)
    magic, *fields = struct.unpack_from("<I9i", data, 0)
    if magic != MAGIC:
        raise BadInput(f"wrong magic 0x{magic:08x} (encodec.cpp files start with 0x{MAGIC:08x}, 'ggml')", path)
    h = Hparams(*fields)
    if h.ftype not in (F32, F16):
        raise BadInput(f"unsupported ftype {h.ftype} (0 = f32, 1 = f16)", path)
    table = expected_tensors(h)
    tensors, types, pos = {}, {}, 40
    while pos < len(data):
        if pos + 12 > len(data):
            raise BadInput(f"truncated tensor record at byte {pos}", path)
        n_dims, name_len, ttype = struct.unpack_from("<3i", data, pos)
        pos += 12
        if not 1 <= n_dims <= 3 or not 0 < name_len < 256 or ttype not in DTYPES:
            raise BadInput(f"corrupt tensor record at byte {pos - 12} (dims {n_dims}, type {ttype})", path)
        dims = struct.unpack_from(f"<{n_dims}i", data, pos)
        pos += 4 * n_dims
        name = data[pos:pos + name_len].decode("utf-8", errors="replace")
        pos += name_len
        if check_table and name not in table:
            raise BadInput(f"unknown tensor {name!r} (encodec.cpp's loader would reject it)", path)
        nbytes = int(np.prod(dims)) * DTYPES[ttype].itemsize
        if pos + nbytes > len(data):
            raise BadInput(f"truncated data of tensor {name!r}", path)
        tensors[name] = np.frombuffer(data, DTYPES[ttype], int(np.prod(dims)), pos).reshape(tuple(reversed(dims)))
        types[name] = ttype
        pos += nbytes
    return EncodecCppFile(h, tensors, types)


def check_against_loader(f: EncodecCppFile, path: str | Path = "encodec.cpp file") -> None:
    """Names, types and dims against `expected_tensors`: all mismatches in one error."""
    table = expected_tensors(f.hparams)
    problems = [f"missing {n}" for n in table if n not in f.tensors]
    for name, arr in f.tensors.items():
        ttype, dims = table[name]
        if f.types[name] != ttype:
            problems.append(f"{name} is {TYPE_NAMES[f.types[name]]}, the loader expects {TYPE_NAMES[ttype]}")
        if tuple(reversed(arr.shape)) != dims:
            problems.append(f"{name} dims {tuple(reversed(arr.shape))}, the loader expects {dims}")
    if problems:
        raise BadInput(f"{len(problems)} problem(s): " + "; ".join(problems[:4]), path)
