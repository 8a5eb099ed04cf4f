"""EnCodec (and Vocos) on numpy + onnxruntime: WAV prompt -> codes, codes -> WAV, with no torch.

Codes are codebook-major [8, frames] here (EnCodec's own order); the VALL-E pipeline uses frame-major
[frames, 8] (`prompt_codes` converts). A prompt is resampled to 24 kHz mono, encoded, then trimmed or
repeated to a fixed number of frames (the original's 3 s = 225 frames).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from valle_export import graphs, wav
from valle_export.codec_spec import ENCODEC, REQUIRED_METADATA
from valle_export.errors import BadInput

DEFAULT_PROMPT_SECONDS = 3.0
# audio read past the prompt's end: the encoder's look-ahead (a few hundred samples) sees the same samples
# as with the whole file, so trimming before resampling does not change the prompt's codes
PROMPT_CONTEXT_SECONDS = 1.0
MIN_DECODE_FRAMES = 7  # reflect padding needs >= 7 frames in both directions (encodec.cpp has the same limit)
CODES_PER_BOOK = ENCODEC.bins


def _session(path: Path, provider: str, threads: int, hint: str):
    """An onnxruntime session of one graph; a missing or unloadable file is one line naming it."""
    import onnxruntime as ort

    from .onnx_backend import _providers

    if not path.is_file():
        raise BadInput(f"no {path.name} (export it with `{hint}`)", path.parent)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=_providers(provider))
    except Exception as err:  # onnxruntime's untyped load errors
        raise BadInput(f"onnxruntime cannot load the graph ({str(err).splitlines()[0][:200]})", path) from None


class OnnxDecoder:
    """One codes -> audio graph: EnCodec's decoder or Vocos (the same interface, `graphs.codec_decoder_spec`).
    What it is and what it needs (codebooks, minimum frames, rates) comes from its metadata; EnCodec graphs
    written before the "decoder" / "min_frames" keys existed get EnCodec's values."""

    def __init__(self, path: str | Path, provider: str = "auto", threads: int = 0):
        path = Path(path)
        hint = "valle-export vocos -o DIR" if path.name == graphs.VOCOS_DECODER_FILE else "valle-export encodec DIR"
        self.session = _session(path, provider, threads, hint)
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            info = json.loads(meta.get(graphs.META_CODEC, "{}"))
        except ValueError:
            raise BadInput(f"{graphs.META_CODEC} metadata is not JSON", path) from None
        self.name = str(info.get("decoder", "encodec"))
        missing = [k for k in REQUIRED_METADATA if k not in info]
        if missing:
            raise BadInput(f"{graphs.META_CODEC} metadata lacks {', '.join(missing)} (not a valle-export codec graph)",
                           path)
        self.sample_rate, self.frame_rate = int(info["sample_rate"]), int(info["frame_rate"])
        self.codebooks, self.hop = int(info["codebooks"]), int(info["hop"])
        self.min_frames = int(info.get("min_frames", MIN_DECODE_FRAMES))
        self.random_weights = bool(info.get("random_weights", False))  # exported without weights (a demo)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes [codebooks, frames] -> mono float32 audio [frames * hop]; batched [B, codebooks, frames] ->
        [B, frames * hop]."""
        codes = np.asarray(codes)
        if codes.ndim not in (2, 3) or codes.shape[-2] != self.codebooks:
            raise BadInput(f"codes must be [{self.codebooks}, frames], got {codes.shape}")
        if codes.shape[-1] < self.min_frames:
            raise BadInput(f"the ONNX {self.name} decoder needs at least {self.min_frames} frames, "
                           f"got {codes.shape[-1]}")
        if codes.min() < 0 or codes.max() >= CODES_PER_BOOK:
            raise BadInput(f"codes out of range 0..{CODES_PER_BOOK - 1}: {codes.min()}..{codes.max()}")
        batch = codes.astype(np.int64) if codes.ndim == 3 else codes.astype(np.int64)[None]
        audio = self.session.run(None, {"codes": batch})[0][:, 0]
        return audio if codes.ndim == 3 else audio[0]


class OnnxCodec:
    """EnCodec's encoder (prompts are always EnCodec codes, as in the original) with a decoder of choice."""

    def __init__(self, folder: str | Path, provider: str = "auto", threads: int = 0, decoder: str = "encodec"):
        folder = Path(folder)
        if decoder not in graphs.DECODER_FILES:
            raise BadInput(f"unknown decoder {decoder!r} ({', '.join(graphs.DECODER_FILES)})")
        self.encoder = _session(folder / graphs.CODEC_ENCODER_FILE, provider, threads, "valle-export encodec DIR")
        self.decoder = OnnxDecoder(folder / graphs.DECODER_FILES[decoder], provider, threads)
        self.sample_rate, self.frame_rate = self.decoder.sample_rate, self.decoder.frame_rate
        self.codebooks, self.hop = self.decoder.codebooks, self.decoder.hop
        self.folder = folder
        encoder_meta = self.encoder.get_modelmeta().custom_metadata_map.get(graphs.META_CODEC, "{}")
        try:
            encoder_random = bool(json.loads(encoder_meta).get("random_weights", False))
        except ValueError:
            raise BadInput(f"{graphs.META_CODEC} metadata is not JSON", folder / graphs.CODEC_ENCODER_FILE) from None
        self.random_weights = self.decoder.random_weights or encoder_random  # either half exported without weights

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """Mono float32 audio at `sample_rate` [N] -> codes [codebooks, ceil(N / hop)] int64."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            raise BadInput("audio is empty")
        if audio.size < MIN_DECODE_FRAMES * self.hop:
            raise BadInput(f"audio of {audio.size} samples is too short to encode (at least "
                           f"{MIN_DECODE_FRAMES * self.hop} samples, {MIN_DECODE_FRAMES / self.frame_rate:.3f} s)")
        if not np.isfinite(audio).all():
            raise BadInput("audio contains NaN or infinite samples")
        return self.encoder.run(None, {"audio": audio[None, None]})[0][0]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes [codebooks, frames] -> mono float32 audio [frames * hop], with the chosen decoder."""
        return self.decoder.decode(codes)

    def prompt_codes(self, path: str | Path, seconds: float = DEFAULT_PROMPT_SECONDS) -> np.ndarray:
        """An audio prompt as VALL-E prompt codes, frame-major [frames, codebooks], trimmed or repeated to
        `seconds` (0 = the whole clip)."""
        from valle_export.audio import load_audio

        whole = seconds <= 0
        codes = self.encode(load_audio(path, self.sample_rate, None if whole else seconds + PROMPT_CONTEXT_SECONDS)).T
        return codes if whole else fit_frames(codes, int(round(seconds * self.frame_rate)))

    def write(self, path: str | Path, codes: np.ndarray, float32: bool = False) -> Path:
        """Decode codebook-major codes and write a WAV atomically."""
        return wav.write_wav(path, self.decode(codes), self.sample_rate, float32)


def fit_frames(codes: np.ndarray, frames: int) -> np.ndarray:
    """Trim to `frames`, or repeat the whole prompt until it is that long (as the original does)."""
    if frames <= 0 or len(codes) == 0:
        raise BadInput(f"cannot fit {len(codes)} prompt frames to {frames}")
    reps = -(-frames // len(codes))
    return np.concatenate([codes] * reps)[:frames]
