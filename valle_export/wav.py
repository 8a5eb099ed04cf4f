"""WAV input/output and resampling with stdlib + numpy (no torch, no soundfile).

Reads RIFF/WAVE PCM (8/16/24/32-bit), IEEE float (32/64-bit) and WAVE_FORMAT_EXTENSIBLE of either, 1..64
channels (averaged to mono) at 1 kHz..384 kHz, checking the header before reading any sample; resamples
with a Kaiser-windowed sinc (polyphase, rational ratio) to the codec's 24 kHz. Writes 16-bit PCM or
32-bit float. Every problem is one `BadInput` line.
"""
from __future__ import annotations

import dataclasses
import math
import os
import struct
from pathlib import Path

import numpy as np

from .errors import BadInput
from .files import atomic_path

PCM, IEEE_FLOAT, EXTENSIBLE = 1, 3, 0xFFFE
MAX_UPSAMPLING_PHASES = 1 << 20
MIN_RATE, MAX_RATE = 1000, 384_000  # Hz; outside this a header is corrupt (and 1 Hz would upsample 24000x)
MAX_CHANNELS = 64
MAX_SECONDS = 600.0  # the longest WAV read whole (a prompt reads only what it needs)
MAX_FMT_BYTES = 1024


@dataclasses.dataclass(frozen=True)
class WavHeader:
    """What the RIFF header says, checked before any sample is read."""

    encoding: int  # PCM or IEEE_FLOAT (EXTENSIBLE resolved)
    channels: int
    rate: int
    bits: int
    data_offset: int
    data_bytes: int  # clipped to the file's real size

    @property
    def frame_bytes(self) -> int:
        return self.channels * (self.bits // 8)

    @property
    def frames(self) -> int:
        return self.data_bytes // self.frame_bytes


def _scan_chunks(f, file_size: int, path) -> tuple[bytes, int, int]:
    """(fmt chunk bytes, data offset, data size) by seeking over the chunks, reading only the fmt chunk."""
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        raise BadInput("not a WAV file (no RIFF/WAVE header)", path)
    if head[:4] == b"RIFX":
        raise BadInput("big-endian RIFX WAV is not supported", path)
    fmt_chunk, data, pos = None, None, 12
    while pos + 8 <= file_size and (fmt_chunk is None or data is None):
        f.seek(pos)
        cid, size = struct.unpack("<4sI", f.read(8))
        if cid == b"fmt " and fmt_chunk is None:
            fmt_chunk = f.read(min(size, MAX_FMT_BYTES))
        elif cid == b"data" and data is None:
            data = (pos + 8, max(0, min(size, file_size - pos - 8)))
        pos += 8 + size + (size & 1)
    for need, got in ((b"fmt ", fmt_chunk), (b"data", data)):
        if got is None:
            raise BadInput(f"corrupt WAV file (no '{need.decode().strip()}' chunk)", path)
    return fmt_chunk, data[0], data[1]


def _parse_fmt(fmt_chunk: bytes, path) -> tuple[int, int, int, int]:
    """(encoding, channels, rate, bits), each within what this reader handles."""
    if len(fmt_chunk) < 16:
        raise BadInput("corrupt WAV file (short 'fmt' chunk)", path)
    fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt_chunk[:16])
    if fmt == EXTENSIBLE and len(fmt_chunk) >= 26:
        fmt = struct.unpack("<H", fmt_chunk[24:26])[0]
    if not 1 <= channels <= MAX_CHANNELS:
        raise BadInput(f"corrupt WAV file ({channels} channels; 1..{MAX_CHANNELS} supported)", path)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise BadInput(f"WAV sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz", path)
    if not ((fmt == IEEE_FLOAT and bits in (32, 64)) or (fmt == PCM and bits in (8, 16, 24, 32))):
        raise BadInput(f"unsupported WAV encoding (format {fmt}, {bits} bits)", path)
    return fmt, channels, rate, bits


def read_header(path: str | os.PathLike) -> WavHeader:
    """The checked header of a WAV file (no samples read)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            fmt_chunk, offset, nbytes = _scan_chunks(f, size, path)
    except FileNotFoundError:
        raise BadInput("file not found", path) from None
    except IsADirectoryError:
        raise BadInput("is a folder, not a WAV file", path) from None
    return WavHeader(*_parse_fmt(fmt_chunk, path), offset, nbytes)


def _decode_samples(raw: bytes, fmt: int, bits: int) -> np.ndarray:
    if fmt == IEEE_FLOAT:
        return np.frombuffer(raw[: len(raw) // (bits // 8) * (bits // 8)], dtype=f"<f{bits // 8}").astype(np.float32)
    if bits == 8:
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if bits == 24:
        b = np.frombuffer(raw[: len(raw) // 3 * 3], np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return v.astype(np.float32) / float(1 << 23)
    dt = {16: "<i2", 32: "<i4"}[bits]
    n = len(raw) // (bits // 8)
    return np.frombuffer(raw[: n * (bits // 8)], dt).astype(np.float32) / float(1 << (bits - 1))


def read_wav(path: str | os.PathLike, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """(float32 samples [frames, channels] in [-1, 1], sample rate). With `max_seconds`, only the first
    `max_seconds` are read; without it, a file longer than `MAX_SECONDS` is refused. Either way the header
    is checked and the size known before anything is allocated."""
    path = Path(path)
    h = read_header(path)
    frames = h.frames
    if max_seconds is not None:
        frames = min(frames, int(math.ceil(max_seconds * h.rate)))
    elif frames > MAX_SECONDS * h.rate:
        raise BadInput(f"WAV of {frames / h.rate:.0f} s is longer than {MAX_SECONDS:.0f} s", path)
    with open(path, "rb") as f:
        f.seek(h.data_offset)
        raw = f.read(frames * h.frame_bytes)
    samples = _decode_samples(raw, h.encoding, h.bits)
    return samples[: len(samples) // h.channels * h.channels].reshape(-1, h.channels), h.rate


def to_mono(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=1) if samples.ndim == 2 else samples


def _kaiser_sinc_table(up: int, down: int, zeros: int, beta: float) -> tuple[np.ndarray, int]:
    """Polyphase filter bank [up, 2*half+1] for resampling by up/down (low-pass at the lower Nyquist)."""
    cutoff = 0.97 * min(1.0, up / down)  # relative to the input Nyquist
    half = int(math.ceil(zeros / cutoff))
    k = np.arange(-half, half + 1)
    phases = np.arange(up)[:, None] / up  # fractional input offset of each phase
    x = k[None, :] - phases
    window = np.i0(beta * np.sqrt(np.clip(1 - (x / (half + 1)) ** 2, 0, 1))) / np.i0(beta)
    return (cutoff * np.sinc(cutoff * x) * window).astype(np.float32), half


def resample(x: np.ndarray, rate_in: int, rate_out: int, zeros: int = 24, beta: float = 8.6) -> np.ndarray:
    """Band-limited resampling of mono float32 `x` from rate_in to rate_out (Hz)."""
    if rate_in == rate_out:
        return x.astype(np.float32)
    if rate_in <= 0 or rate_out <= 0:
        raise BadInput(f"cannot resample from {rate_in} Hz to {rate_out} Hz")
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    if up > MAX_UPSAMPLING_PHASES:
        raise BadInput(f"cannot resample {rate_in} Hz to {rate_out} Hz (ratio {up}/{down} too fine)")
    table, half = _kaiser_sinc_table(up, down, zeros, beta)
    n_out = int(math.ceil(len(x) * up / down))
    padded = np.pad(x.astype(np.float32), (half, half + 1))
    out = np.empty(n_out, dtype=np.float32)
    taps = np.arange(2 * half + 1)
    for start in range(0, n_out, 16384):
        n = np.arange(start, min(n_out, start + 16384))
        base, phase = (n * down) // up, (n * down) % up
        out[n] = np.einsum("ij,ij->i", padded[base[:, None] + taps[None, :]], table[phase])
    return out


def load_audio(path: str | os.PathLike, rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Mono float32 audio at `rate` Hz from any WAV (only its first `max_seconds` when given, trimmed
    BEFORE resampling); refuses empty and non-finite audio."""
    samples, rate_in = read_wav(path, max_seconds)
    if samples.size == 0:
        raise BadInput("WAV file has no samples", path)
    if not np.isfinite(samples).all():
        raise BadInput("WAV file contains NaN or infinite samples", path)
    try:
        return resample(to_mono(samples), rate_in, rate)
    except BadInput as err:
        raise BadInput(err.problem, path) from None


def write_wav(path: str | os.PathLike, audio: np.ndarray, rate: int, float32: bool = False) -> Path:
    """Write mono audio atomically: 16-bit PCM (clipped to [-1, 1]) or 32-bit IEEE float."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if float32:
        payload, fmt, bits = audio.astype("<f4").tobytes(), IEEE_FLOAT, 32
    else:
        payload, fmt, bits = (np.clip(audio, -1, 1) * 32767).round().astype("<i2").tobytes(), PCM, 16
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(payload), b"WAVE", b"fmt ", 16, fmt, 1, rate,
                         rate * bits // 8, bits // 8, bits, b"data", len(payload))
    with atomic_path(path) as tmp:
        tmp.write_bytes(header + payload)
    return Path(path)
