"""EnCodec on numpy + onnxruntime: WAV prompt -> codes, codes -> WAV, with no torch.

Codes are codebook-major [8, frames] here (EnCodec's own order); the VALL-E pipeline uses frame-major
[frames, 8] (`prompt_codes` converts). A prompt is resampled to 24 kHz mono, encoded, then trimmed or
repeated to a fixed number of frames (the original's 3 s = 225 frames).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from valle_export import graphs, wav
from valle_export.errors import BadInput

DEFAULT_PROMPT_SECONDS = 3.0
# audio read past the prompt's end: the encoder's look-ahead (a few hundred samples) sees the same samples
# as with the whole file, so trimming before resampling does not change the prompt's codes
PROMPT_CONTEXT_SECONDS = 1.0
MIN_DECODE_FRAMES = 7  # reflect padding needs >= 7 frames in both directions (encodec.cpp has the same limit)


class OnnxCodec:
    def __init__(self, folder: str | Path, provider: str = "auto", threads: int = 0):
        import onnxruntime as ort

        from .onnx_backend import _providers

        folder = Path(folder)
        self.folder = folder
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.sessions = {}
        for kind, name in (("encoder", graphs.CODEC_ENCODER_FILE), ("decoder", graphs.CODEC_DECODER_FILE)):
            path = folder / name
            if not path.is_file():
                raise BadInput(f"no {name} (export it with `valle-export encodec`)", folder)
            try:
                self.sessions[kind] = ort.InferenceSession(str(path), opts, providers=_providers(provider))
            except Exception as err:  # onnxruntime's untyped load errors
                raise BadInput(f"onnxruntime cannot load the graph ({str(err).splitlines()[0][:200]})", path) from None
        meta = self.sessions["decoder"].get_modelmeta().custom_metadata_map
        info = json.loads(meta.get(graphs.META_CODEC, "{}"))
        self.sample_rate = int(info.get("sample_rate", 24000))
        self.frame_rate = int(info.get("frame_rate", 75))
        self.codebooks = int(info.get("codebooks", 8))
        self.hop = int(info.get("hop", 320))
        self.random_weights = bool(info.get("random_weights", False))  # exported without weights (a demo)

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
        return self.sessions["encoder"].run(None, {"audio": audio[None, None]})[0][0]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes [codebooks, frames] -> mono float32 audio [frames * hop]."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] != self.codebooks:
            raise BadInput(f"codes must be [{self.codebooks}, frames], got {codes.shape}")
        if codes.shape[1] < MIN_DECODE_FRAMES:
            raise BadInput(f"the ONNX decoder needs at least {MIN_DECODE_FRAMES} frames, got {codes.shape[1]}")
        if codes.min() < 0 or codes.max() >= 1024:
            raise BadInput(f"codes out of range 0..1023: {codes.min()}..{codes.max()}")
        return self.sessions["decoder"].run(None, {"codes": codes[None]})[0][0, 0]

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
