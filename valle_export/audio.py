"""Audio files in any common format: RIFF WAV through our own bounded reader (`wav`), everything else
(FLAC, OGG, AIFF, MP3 where libsndfile has it) through the soundfile library; output WAV (float32 like the
original, or 16-bit PCM), FLAC (24-bit) or OGG Vorbis, always written atomically. Imports: numpy, soundfile
(lazily), wav, files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import names, wav
from .errors import BadInput
from .files import atomic_path

FORMATS = names.AUDIO_FORMATS
_SOUNDFILE_FORMAT = {"flac": ("FLAC", "PCM_24"), "ogg": ("OGG", "VORBIS")}


def _soundfile():
    try:
        import soundfile
    except (ImportError, OSError):
        raise BadInput("reading or writing non-WAV audio needs the soundfile package (pip install soundfile)") from None
    return soundfile


def _is_riff(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) in (b"RIFF", b"RIFX")
    except FileNotFoundError:
        raise BadInput("file not found", path) from None
    except IsADirectoryError:
        raise BadInput("is a folder, not an audio file", path) from None


def read_audio(path: str | os.PathLike, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """(float32 samples [frames, channels], rate); only the first `max_seconds` when given, else at most
    `wav.MAX_SECONDS`. Header checked before samples are read; every problem is one BadInput line."""
    path = Path(path)
    if _is_riff(path):
        return wav.read_wav(path, max_seconds)
    sf = _soundfile()
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises its own LibsndfileError / RuntimeError
        reason = str(err).splitlines()[0].rsplit(": ", 1)[-1][:120]  # without soundfile's repeat of the path
        raise BadInput(f"not an audio file soundfile can read ({reason})", path) from None
    if not wav.MIN_RATE <= info.samplerate <= wav.MAX_RATE or not 1 <= info.channels <= wav.MAX_CHANNELS:
        raise BadInput(f"unsupported audio ({info.samplerate} Hz, {info.channels} channels)", path)
    frames = info.frames
    if max_seconds is not None:
        frames = min(frames, int(np.ceil(max_seconds * info.samplerate)))
    elif frames > wav.MAX_SECONDS * info.samplerate:
        raise BadInput(f"audio of {frames / info.samplerate:.0f} s is longer than {wav.MAX_SECONDS:.0f} s", path)
    try:
        samples, rate = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except Exception as err:
        raise BadInput(f"cannot decode audio ({str(err).splitlines()[0][:120]})", path) from None
    return samples, int(rate)


def load_audio(path: str | os.PathLike, rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Mono float32 audio at `rate` Hz from any supported file (trimmed BEFORE resampling); refuses empty
    and non-finite audio."""
    samples, rate_in = read_audio(path, max_seconds)
    if samples.size == 0:
        raise BadInput("audio file has no samples", path)
    if not np.isfinite(samples).all():
        raise BadInput("audio file contains NaN or infinite samples", path)
    try:
        return wav.resample(wav.to_mono(samples), rate_in, rate)
    except BadInput as err:
        raise BadInput(err.problem, path) from None


def format_of(path: str | os.PathLike, fmt: str | None) -> str:
    """`fmt`, else from the file name's extension (the original's torchaudio.save rule), else wav."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise BadInput(f"--format must be one of {', '.join(FORMATS)}")
        return fmt
    ext = Path(path).suffix.lower().lstrip(".")
    return "ogg" if ext == "oga" else ext if ext in FORMATS else "wav"


def write_audio(path: str | os.PathLike, audio: np.ndarray, rate: int, fmt: str = "wav",
                float32: bool = True) -> Path:
    """Write mono audio atomically in `fmt`; WAV is 32-bit float (the original's) or 16-bit PCM."""
    if fmt == "wav":
        return wav.write_wav(path, audio, rate, float32=float32)
    sf = _soundfile()
    container, subtype = _SOUNDFILE_FORMAT[fmt]
    data = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1, 1)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), data, rate, format=container, subtype=subtype)
    return Path(path)
