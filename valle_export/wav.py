"""WAV input/output and resampling with stdlib + numpy (no torch, no soundfile).

Reads RIFF/WAVE PCM (8/16/24/32-bit), IEEE float (32/64-bit) and WAVE_FORMAT_EXTENSIBLE of either, any
channel count (averaged to mono) and any rate; resamples with a Kaiser-windowed sinc (polyphase, rational
ratio) to the codec's 24 kHz. Writes 16-bit PCM or 32-bit float. Every problem is one `BadInput` line.
"""
from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np

from .errors import BadInput
from .files import atomic_path

PCM, IEEE_FLOAT, EXTENSIBLE = 1, 3, 0xFFFE
MAX_UPSAMPLING_PHASES = 1 << 20


def _chunks(data: bytes, path) -> dict[bytes, bytes]:
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        raise BadInput("not a WAV file (no RIFF/WAVE header)", path)
    if data[:4] == b"RIFX":
        raise BadInput("big-endian RIFX WAV is not supported", path)
    chunks, pos = {}, 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        chunks.setdefault(cid, data[pos + 8:pos + 8 + size])
        pos += 8 + size + (size & 1)
    for need in (b"fmt ", b"data"):
        if need not in chunks:
            raise BadInput(f"corrupt WAV file (no '{need.decode().strip()}' chunk)", path)
    return chunks


def _decode_samples(raw: bytes, fmt: int, bits: int, path) -> np.ndarray:
    if fmt == IEEE_FLOAT and bits in (32, 64):
        return np.frombuffer(raw[: len(raw) // (bits // 8) * (bits // 8)], dtype=f"<f{bits // 8}").astype(np.float32)
    if fmt != PCM or bits not in (8, 16, 24, 32):
        raise BadInput(f"unsupported WAV encoding (format {fmt}, {bits} bits)", path)
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


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(float32 samples [frames, channels] in [-1, 1], sample rate)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput("file not found", path) from None
    except IsADirectoryError:
        raise BadInput("is a folder, not a WAV file", path) from None
    chunks = _chunks(data, path)
    fmt_chunk = chunks[b"fmt "]
    if len(fmt_chunk) < 16:
        raise BadInput("corrupt WAV file (short 'fmt' chunk)", path)
    fmt, channels, rate, _, block, bits = struct.unpack("<HHIIHH", fmt_chunk[:16])
    if fmt == EXTENSIBLE and len(fmt_chunk) >= 26:
        fmt = struct.unpack("<H", fmt_chunk[24:26])[0]
    if channels < 1 or rate < 1:
        raise BadInput(f"corrupt WAV file ({channels} channels at {rate} Hz)", path)
    samples = _decode_samples(chunks[b"data"], fmt, bits, path)
    samples = samples[: len(samples) // channels * channels].reshape(-1, channels)
    return samples, int(rate)


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


def load_audio(path: str | os.PathLike, rate: int) -> np.ndarray:
    """Mono float32 audio at `rate` Hz from any WAV; refuses empty and non-finite audio."""
    samples, rate_in = read_wav(path)
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
