"""Vocos as one ONNX graph with the EnCodec decoder's interface, so any ONNX runtime decodes codes with it:

    vocos_decoder.onnx   codes [batch, levels, frames] int64 -> audio [batch, 1, frames * 320] float32

The bandwidth id is a constant picked from `levels` as the original does (8 -> 2). Neither torch exporter
handles the head's complex tensors, so its inverse STFT is written in real ops:

    frames [B, T, n_fft] = [mag cos p, mag sin p] @ basis    basis [n_fft + 2, n_fft]: the windowed inverse
                                                              real DFT (irfft's 1/N and bin weights folded in)
    overlap-add, polyphase: frames as [B, T, r, hop] (r = n_fft / hop); y = sum_j Pad(block j, j before,
                            r - 1 - j after) -> [B, (T + r - 1) * hop]; the same sum of window^2 is the envelope
    audio = (y / envelope)[trim : -trim]                      trim = (n_fft - hop) / 2, as "same" padding

Exported with the legacy TorchScript exporter at opset 17 (design section 8), verified against the torch
reference at several lengths and batch 2 before the folder appears.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from valle_export import graphs
from valle_export.errors import ValleExportError
from valle_export.files import atomic_dir
from valle_export.progress import Progress
from reference_model import vocos
from reference_model.vocos import Vocos, VocosSpec

from .encodec_onnx import export_graph

EXAMPLE_FRAMES = 50
VERIFY_FRAMES = (1, 2, 7, 151)
VERIFY_BATCH_FRAMES = 23  # batch 2 at this length
REL_BOUND = 1e-5  # waveform max-abs error / max |reference| (measured ~1e-6 on random weights)
MIN_FRAMES = 1


def idft_basis(window: np.ndarray, spec: VocosSpec) -> np.ndarray:
    """[n_fft + 2, n_fft] float32: rows 0..n_fft/2 map real parts, the rest imaginary parts, to one windowed
    frame exactly as irfft(norm="backward") * window does (DC and Nyquist counted once, their imaginary parts
    ignored). Computed in float64 with the angle reduced mod n_fft."""
    n, bins = spec.n_fft, spec.freq_bins
    k, t = np.arange(bins)[:, None], np.arange(n)[None, :]
    angle = 2 * np.pi * ((k * t) % n) / n
    weight = np.full((bins, 1), 2.0)
    weight[[0, -1]] = 1.0
    w = np.asarray(window, np.float64)[None, :] / n
    real, imag = weight * np.cos(angle) * w, -weight * np.sin(angle) * w
    imag[[0, -1]] = 0.0
    return np.concatenate([real, imag]).astype(np.float32)


def overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """[B, T, n_fft] -> [B, (T - 1) * hop + n_fft]: frame t added at sample t * hop, in F.fold's order."""
    blocks = frames.unflatten(-1, (frames.shape[-1] // hop, hop))  # [B, T, r, hop]
    r = blocks.shape[2]
    total = sum(nn.functional.pad(blocks[:, :, j], (0, 0, j, r - 1 - j)) for j in range(r))  # [B, T + r - 1, hop]
    return total.flatten(1)


class VocosDecoderGraph(nn.Module):
    """codes [B, levels, T] -> audio [B, 1, hop * T], real-valued ops only."""

    def __init__(self, model: Vocos, levels: int):
        super().__init__()
        spec = model.spec
        if spec.n_fft % spec.hop:
            raise ValueError("the polyphase overlap-add needs n_fft to be a multiple of hop")
        self.spec, self.backbone, self.out = spec, model.backbone, model.head.out
        table = model.feature_extractor.codebook_weights[: levels * spec.bins]
        self.register_buffer("table", table.detach().clone())
        self.register_buffer("offsets", (torch.arange(levels) * spec.bins)[None, :, None])
        self.register_buffer("bandwidth_id", torch.tensor([vocos.bandwidth_id_for(levels)]))
        window = model.head.istft.window.detach()
        self.register_buffer("basis", torch.from_numpy(idft_basis(window.numpy(), spec)))
        self.register_buffer("window_sq", window.square())

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        features = nn.functional.embedding(codes + self.offsets, self.table).sum(dim=1).transpose(1, 2)
        head = self.out(self.backbone(features, self.bandwidth_id))  # [B, T, n_fft + 2]
        log_mag, phase = head[..., : spec.freq_bins], head[..., spec.freq_bins:]
        mag = torch.clamp(torch.exp(log_mag), max=spec.max_magnitude)
        frames = torch.cat([mag * torch.cos(phase), mag * torch.sin(phase)], dim=-1) @ self.basis
        y = overlap_add(frames, spec.hop)
        envelope = overlap_add(torch.ones_like(frames[:1, :, :1]) * self.window_sq, spec.hop)
        return (y / envelope)[:, None, spec.trim: -spec.trim]


def vocos_metadata(spec: VocosSpec, levels: int, random_weights: bool = False) -> dict[str, str]:
    """`random_weights` marks the seeded default (no WEIGHTS): synthesis warns that its audio is noise."""
    info = {"decoder": "vocos", "sample_rate": spec.sample_rate, "frame_rate": spec.sample_rate // spec.hop,
            "codebooks": levels, "hop": spec.hop, "n_fft": spec.n_fft,
            "bandwidth_id": vocos.bandwidth_id_for(levels), "min_frames": MIN_FRAMES, "random_weights": random_weights}
    return {graphs.META_CODEC: json.dumps(info)}


def verify_vocos(model: Vocos, path: Path, levels: int) -> float:
    """Worst waveform error (relative to the reference's peak) over VERIFY_FRAMES and one batch of 2."""
    from runtimes.codec import OnnxDecoder

    decoder = OnnxDecoder(path, provider="cpu")
    rng = np.random.default_rng(0)
    cases = [rng.integers(0, model.spec.bins, (levels, t)) for t in VERIFY_FRAMES]
    cases.append(rng.integers(0, model.spec.bins, (2, levels, VERIFY_BATCH_FRAMES)))
    worst = 0.0
    for codes in cases:
        want = vocos.decode(model, codes)
        got = decoder.decode(codes)
        # np.maximum keeps a NaN (Python's max() would drop it)
        worst = float(np.maximum(worst, np.abs(got - want).max() / np.abs(want).max()))
    return worst


def export_vocos_onnx(model: Vocos, out_dir: Path, levels: int = 8, progress: Progress | None = None,
                      random_weights: bool = False) -> float:
    """Write OUT_DIR/vocos_decoder.onnx (beside whatever the folder holds), verified; returns the error."""
    progress = progress or Progress(quiet=True)
    spec = model.spec
    if not 1 <= levels <= spec.stored_codebooks:
        raise ValleExportError(f"levels must be 1..{spec.stored_codebooks}, got {levels}")
    with atomic_dir(out_dir) as tmp:
        progress.stage(f"exporting Vocos decoder (codes [B, {levels}, T] -> audio, "
                       f"bandwidth id {vocos.bandwidth_id_for(levels)}, inverse STFT in the graph)")
        codes = torch.randint(0, spec.bins, (2, levels, EXAMPLE_FRAMES))
        path = tmp / graphs.VOCOS_DECODER_FILE
        export_graph(VocosDecoderGraph(model, levels).eval(), codes, graphs.vocos_decoder_spec(levels), path,
                     vocos_metadata(spec, levels, random_weights))
        progress.stage(f"verifying against torch ({', '.join(map(str, VERIFY_FRAMES))} frames, batch 2)")
        error = verify_vocos(model, path, levels)
        progress.stage(f"waveform relative error {error:.2e} (bound {REL_BOUND:g})")
        if not error <= REL_BOUND:  # NaN fails
            raise ValleExportError(f"Vocos verification failed: relative error {error:.3e} > {REL_BOUND:g}",
                                   out_dir)
    return error
