"""Voices: reference clips -> prompt codes, as the original's `encode_audio` (every clip encoded, codes
concatenated, then repeated or trimmed to `prompt_seconds`, 0 = as they are), and a voice file
(`voice.npz`: codes + metadata) so a voice is encoded once and reused without the encoder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from valle_export import audio, graphs
from valle_export.errors import BadInput
from valle_export.files import atomic_path

from .codec import PROMPT_CONTEXT_SECONDS, OnnxCodec, fit_frames

VOICE_FORMAT = "valle-export-voice/1"


@dataclasses.dataclass(frozen=True)
class Voice:
    codes: np.ndarray  # int64 [frames, codebooks], frame-major like every prompt
    sample_rate: int
    frame_rate: int
    codec_fingerprint: str  # sha256 of the decoder graph: codes only mean something to the same codebooks
    sources: tuple[str, ...] = ()
    prompt_seconds: float = 0.0

    @property
    def frames(self) -> int:
        return int(self.codes.shape[0])


def codec_fingerprint(codec: OnnxCodec) -> str:
    """sha256 of the codec's decoder graph file (computed once per codec object)."""
    cached = getattr(codec, "_valle_fingerprint", None)
    if cached is None:
        digest = hashlib.sha256()
        with open(Path(codec.folder) / graphs.CODEC_DECODER_FILE, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        cached = digest.hexdigest()
        codec._valle_fingerprint = cached
    return cached


def encode_voice(codec: OnnxCodec, files: list[str | os.PathLike], prompt_seconds: float = 3.0) -> Voice:
    """Encode every clip, concatenate the codes, then repeat or trim them to `prompt_seconds` (0 = keep).
    Only the audio that can reach the result is read (each clip at most prompt_seconds + encoder context)."""
    if not files:
        raise BadInput("a voice needs at least one audio file")
    read = prompt_seconds + PROMPT_CONTEXT_SECONDS if prompt_seconds > 0 else None
    codes = [codec.encode(audio.load_audio(f, codec.sample_rate, max_seconds=read)).T for f in files]
    joined = np.concatenate(codes).astype(np.int64)
    if prompt_seconds > 0:
        joined = fit_frames(joined, int(round(prompt_seconds * codec.frame_rate)))
    return Voice(joined, codec.sample_rate, codec.frame_rate, codec_fingerprint(codec),
                 tuple(str(f) for f in files), float(prompt_seconds))


def save_voice(voice: Voice, path: str | os.PathLike) -> Path:
    meta = {"format": VOICE_FORMAT, "sample_rate": voice.sample_rate, "frame_rate": voice.frame_rate,
            "frames": voice.frames, "codebooks": int(voice.codes.shape[1]),
            "codec_fingerprint": voice.codec_fingerprint, "sources": list(voice.sources),
            "prompt_seconds": voice.prompt_seconds}
    buf = io.BytesIO()
    np.savez(buf, codes=voice.codes.astype(np.int16), meta=np.array(json.dumps(meta)))
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return Path(path)


def load_voice(path: str | os.PathLike) -> Voice:
    """A voice file, checked (format tag, shape, code range) before use; never unpickles."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            codes, meta = z["codes"].astype(np.int64), json.loads(str(z["meta"]))
    except FileNotFoundError:
        raise BadInput("file not found", path) from None
    except (OSError, ValueError, KeyError) as err:
        raise BadInput(f"not a voice file ({str(err).splitlines()[0][:100]}); make one with `valle-export "
                       "voice`", path) from None
    if meta.get("format") != VOICE_FORMAT:
        raise BadInput(f"not a voice file (format {meta.get('format')!r})", path)
    if codes.ndim != 2 or codes.shape[0] != meta.get("frames") or not len(codes):
        raise BadInput(f"corrupt voice file (codes of shape {codes.shape})", path)
    if codes.min() < 0 or codes.max() >= 1024:
        raise BadInput(f"corrupt voice file (codes {codes.min()}..{codes.max()} outside 0..1023)", path)
    return Voice(codes, int(meta["sample_rate"]), int(meta["frame_rate"]), str(meta["codec_fingerprint"]),
                 tuple(meta.get("sources", ())), float(meta.get("prompt_seconds", 0.0)))


def check_voice(voice: Voice, codec: OnnxCodec, where: str | os.PathLike | None = None) -> None:
    """A voice encoded with other codebooks (another codec export) would condition on the wrong sounds."""
    if voice.codec_fingerprint != codec_fingerprint(codec):
        raise BadInput("the voice was encoded with another codec (fingerprint differs); re-encode it with "
                       "`valle-export voice` and this codec", where)
    if voice.frame_rate != codec.frame_rate or voice.codes.shape[1] != codec.codebooks:
        raise BadInput(f"the voice has {voice.codes.shape[1]} codebooks at {voice.frame_rate} frames/s; the "
                       f"codec {codec.codebooks} at {codec.frame_rate}", where)
