"""EnCodec 24 kHz at 6 kbps as two ONNX graphs with a dynamic time axis:

    encodec_encoder.onnx   audio [batch, 1, samples] float32 -> codes [batch, 8, frames] int64
    encodec_decoder.onnx   codes [batch, 8, frames] int64     -> audio [batch, 1, frames * 320] float32

Exported with the legacy TorchScript exporter: the dynamo exporter froze a Reshape after the LSTM to the
example length (design section 6). Each graph is checked, then verified against torch at lengths other than
the example before the folder appears.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from valle_export import contracts, graphs
from valle_export.codec_spec import ENCODEC
from valle_export.errors import ValleExportError
from valle_export.files import atomic_dir
from valle_export.progress import Progress
from reference_model import codec

EXAMPLE_FRAMES = 50
DECODER_REL_BOUND = contracts.CODEC_DECODER_REL  # waveform max-abs error / max |reference| (measured ~1e-7)


class EncoderWrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, audio):
        codes = self.model.quantizer.encode(self.model.encoder(audio), bandwidth=codec.BANDWIDTH_KBPS)
        return codes.transpose(0, 1)  # [nq, B, T] -> [B, nq, T]


class DecoderWrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, codes):
        return self.model.decoder(self.model.quantizer.decode(codes.transpose(0, 1)))


def codec_metadata(random_weights: bool = False) -> dict[str, str]:
    """`random_weights` marks a codec exported without weights: synthesis warns that its audio is noise."""
    info = ENCODEC.metadata() | {"random_weights": random_weights}
    return {graphs.META_CODEC: json.dumps(info)}


def export_graph(wrapper: nn.Module, example: torch.Tensor, spec: graphs.GraphSpec, path: Path,
                 metadata: dict[str, str] | None = None) -> None:
    """Legacy-exporter graph with `spec`'s names and dynamic axes, metadata (default: EnCodec's), checked."""
    import onnx

    axes = {t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)} for t in spec.inputs + spec.outputs}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(path), input_names=spec.input_names,
                          output_names=spec.output_names, dynamic_axes=axes, opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    for k, v in (codec_metadata() if metadata is None else metadata).items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))


def verify_codec(model, folder: Path) -> dict[str, float]:
    """Decoder waveform error and encoder code mismatches vs torch at several lengths (batch 1)."""
    from runtimes.codec import OnnxCodec

    onnx_codec = OnnxCodec(folder, provider="cpu")
    rng = np.random.default_rng(0)
    worst_wave, code_mismatch = 0.0, 0
    for frames in (7, 23, 151):
        codes = rng.integers(0, 1024, (codec.N_CODEBOOKS, frames))
        want = codec.decode(model, codes)
        got = onnx_codec.decode(codes)
        # np.maximum keeps a NaN (Python's max() would drop it after the first length)
        worst_wave = float(np.maximum(worst_wave, contracts.rel_error(got, want)))
        audio = (0.3 * rng.standard_normal((frames + 1) * codec.HOP - 17)).astype(np.float32)
        code_mismatch += int((onnx_codec.encode(audio) != codec.encode(model, audio)).sum())
    return {"decoder_rel": worst_wave, "encoder_code_mismatches": code_mismatch}


def export_codec_onnx(model, out_dir: Path, progress: Progress | None = None,
                      random_weights: bool = False) -> dict[str, float]:
    progress = progress or Progress(quiet=True)
    with atomic_dir(out_dir) as tmp:
        progress.stage("exporting EnCodec encoder (audio -> codes)")
        audio = torch.randn(2, 1, EXAMPLE_FRAMES * codec.HOP) * 0.1
        export_graph(EncoderWrapper(model).eval(), audio, graphs.codec_encoder_spec(codec.N_CODEBOOKS),
                tmp / graphs.CODEC_ENCODER_FILE, codec_metadata(random_weights))
        progress.stage("exporting EnCodec decoder (codes -> audio)")
        codes = torch.randint(0, 1024, (2, codec.N_CODEBOOKS, EXAMPLE_FRAMES))
        export_graph(DecoderWrapper(model).eval(), codes, graphs.codec_decoder_spec(codec.N_CODEBOOKS),
                tmp / graphs.CODEC_DECODER_FILE, codec_metadata(random_weights))
        progress.stage("verifying against torch (7, 23, 151 frames)")
        report = verify_codec(model, tmp)
        progress.stage(f"decoder waveform relative error {report['decoder_rel']:.2e} (bound {DECODER_REL_BOUND:g}), "
                       f"encoder code mismatches {report['encoder_code_mismatches']}")
        # NaN-safe: a NaN error fails
        if not contracts.within(report["decoder_rel"], DECODER_REL_BOUND) or report["encoder_code_mismatches"]:
            raise ValleExportError(f"EnCodec verification failed: {report}", out_dir)
    return report
