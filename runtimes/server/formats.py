"""Response formats of `POST /v1/audio/speech` without ffmpeg, as encoders fed one sentence at a time.

Why per format: an HTTP body is not seekable, so only some containers can leave before the audio ends.
pcm (raw 24 kHz s16le, OpenAI's definition), wav (one header with an "unknown" size, then PCM) and mp3
(lameenc frames) stream per sentence; flac and opus (soundfile) are written whole at the end, because
libsndfile rewrites their headers after the data. aac needs FFmpeg and is refused (400).
Imports: numpy, soundfile, lameenc (lazily).
"""
from __future__ import annotations

import io
import struct

import numpy as np

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
STREAMED = ("pcm", "wav", "mp3")
MEDIA_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
               "wav": "audio/wav", "pcm": "audio/pcm"}
UNKNOWN_SIZE = 0xFFFFFFFF  # a streamed WAV's RIFF and data sizes: "to the end of the stream"


class UnsupportedFormat(Exception):
    """A format this installation cannot produce (the message says what would)."""


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_header(rate: int, data_bytes: int = UNKNOWN_SIZE) -> bytes:
    riff = UNKNOWN_SIZE if data_bytes == UNKNOWN_SIZE else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data_bytes))


class Encoder:
    """`feed(audio)` -> bytes to send now; `finish()` -> the rest."""

    def __init__(self, fmt: str, rate: int):
        self.fmt, self.rate, self._started, self._held = fmt, rate, False, []
        if fmt == "aac":
            raise UnsupportedFormat("response_format aac needs FFmpeg, which this server does not use; "
                                    "use mp3, opus, flac, wav or pcm")
        if fmt == "mp3":
            try:
                import lameenc
            except ImportError:
                raise UnsupportedFormat("response_format mp3 needs the lameenc package (pip install "
                                        "'valle-export[serve]'); use opus, flac, wav or pcm") from None
            self._lame = lameenc.Encoder()
            self._lame.set_bit_rate(64)
            self._lame.set_in_sample_rate(rate)
            self._lame.set_channels(1)
            self._lame.set_quality(5)

    @property
    def streamed(self) -> bool:
        return self.fmt in STREAMED

    def feed(self, audio: np.ndarray) -> bytes:
        if self.fmt == "pcm":
            return pcm16(audio)
        if self.fmt == "wav":
            head = b"" if self._started else wav_header(self.rate)
            self._started = True
            return head + pcm16(audio)
        if self.fmt == "mp3":
            return bytes(self._lame.encode(pcm16(audio)))
        self._held.append(np.asarray(audio, dtype=np.float32))
        return b""

    def finish(self) -> bytes:
        if self.fmt == "wav" and not self._started:
            return wav_header(self.rate, 0)
        if self.fmt == "mp3":
            return bytes(self._lame.flush())
        if self.fmt in ("flac", "opus"):
            import soundfile

            audio = np.concatenate(self._held) if self._held else np.zeros(0, np.float32)
            buf = io.BytesIO()
            kind = ("FLAC", "PCM_16") if self.fmt == "flac" else ("OGG", "OPUS")
            soundfile.write(buf, audio, self.rate, format=kind[0], subtype=kind[1])
            return buf.getvalue()
        return b""
