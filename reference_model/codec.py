"""EnCodec 24 kHz (the codec of VALL-E: 8 codebooks of 1024 codes at 75 frames/s at 6 kbps) on
transformers' `EncodecModel`, which is the same network as the `encodec` package (whose torchaudio
dependency breaks this environment).

Weights come from a transformers folder, from an original facebookresearch `encodec_24khz-*.th` state dict
(by the exact name table below), or are drawn at random with a seed. transformers initialises codebooks to
zero, which would make decoding ignore the codes; the random default draws them N(0, 1).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from transformers import EncodecConfig, EncodecModel

from valle_export import contracts
from valle_export.codec_spec import ENCODEC
from valle_export.errors import BadCheckpoint

BANDWIDTH_KBPS = ENCODEC.bandwidth_kbps  # valle_export.codec_spec: the one place these are written
N_CODEBOOKS = ENCODEC.codebooks
SAMPLE_RATE = ENCODEC.sample_rate
HOP = ENCODEC.hop

# weight-norm parameter names: original (torch.nn.utils.weight_norm) <-> transformers (parametrizations)
_PARAM_TO_HF = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
_HF_TO_PARAM = {v: k for k, v in _PARAM_TO_HF.items()}
_TRANSPOSED = {3, 6, 9, 12}  # decoder.model indices of the upsampling SConvTranspose1d layers


def _split_param(rest: list[str]) -> tuple[list[str], str]:
    """(module path, original parameter name) of the part after `{side}.layers.{idx}`."""
    if rest[-3:-1] == ["parametrizations", "weight"]:
        return rest[:-3], _HF_TO_PARAM[".".join(rest[-3:])]
    return rest[:-1], rest[-1]


def hf_to_original(name: str) -> str:
    """transformers name -> original `encodec` package name, one rule per module kind."""
    parts = name.split(".")
    if parts[0] == "quantizer":  # quantizer.layers.i.codebook.X -> quantizer.vq.layers.i._codebook.X
        return ".".join(["quantizer", "vq", "layers", parts[2], "_codebook", *parts[4:]])
    side, idx = parts[0], int(parts[2])
    module, param = _split_param(parts[3:])
    if module == ["lstm"]:
        return f"{side}.model.{idx}.lstm.{param}"
    if module == ["conv"]:  # a plain SConv1d, or an upsampling SConvTranspose1d in the decoder
        inner = "convtr.convtr" if side == "decoder" and idx in _TRANSPOSED else "conv.conv"
        return f"{side}.model.{idx}.{inner}.{param}"
    if len(module) == 3 and module[0] == "block" and module[2] == "conv":
        return f"{side}.model.{idx}.block.{module[1]}.conv.conv.{param}"
    if module == ["shortcut", "conv"]:
        return f"{side}.model.{idx}.shortcut.conv.conv.{param}"
    raise KeyError(f"no original name for {name}")




def _name_table(model: EncodecModel) -> dict[str, str]:
    return {hf_to_original(k): k for k in model.state_dict()}


def original_state_to_hf(model: EncodecModel, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Map an original state dict onto `model`'s names; every name and shape must match exactly."""
    table = _name_table(model)
    target = model.state_dict()
    report = contracts.mismatch_report({k: tuple(target[hf].shape) for k, hf in table.items()},
                                       {k: tuple(v.shape) for k, v in state.items()}, limit=4)
    if report:
        raise BadCheckpoint(f"not an EnCodec 24 kHz state dict ({report})", source)
    return {table[k]: v.to(target[table[k]].dtype) for k, v in state.items()}


def hf_state_to_original(model: EncodecModel) -> dict[str, torch.Tensor]:
    return {hf_to_original(k): v.clone() for k, v in model.state_dict().items()}


def _calibration_audio(gen: torch.Generator, seconds: float = 2.0) -> torch.Tensor:
    """Seeded noise plus tones [1, 1, N]: the signal the random codebooks are scaled to."""
    n = int(SAMPLE_RATE * seconds)
    t = torch.arange(n) / SAMPLE_RATE
    tones = sum(torch.sin(2 * torch.pi * f * t) for f in (110.0, 440.0, 1250.0)) / 3
    return (0.3 * tones + 0.1 * torch.randn(n, generator=gen))[None, None]


def random_codec(seed: int = 0) -> EncodecModel:
    """The seeded random-weight default. transformers' init under `seed` gives an encoder whose output is a
    large constant per channel with a tiny variation over time, and zero codebooks (decoding would ignore
    the codes). So: the encoder's last conv is rescaled so that, on seeded calibration audio, its output
    has zero mean and unit spread over time per channel, and every codebook is drawn N(0, s^2) with s the
    spread of the residual it quantizes. Different frames then pick different codes, and the decoder
    depends strongly on every codebook (a wrong code layout cannot pass a test)."""
    torch.manual_seed(seed)
    model = EncodecModel(EncodecConfig()).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        audio = _calibration_audio(gen)
        last = model.encoder.layers[-1].conv
        out = model.encoder(audio)  # [1, 128, T]
        mean, spread = out.mean(dim=2)[0], out.std(dim=2)[0]
        last.parametrizations.weight.original0.div_(spread[:, None, None])
        last.bias.copy_((last.bias - mean) / spread)
        residual = model.encoder(audio)
        for layer in model.quantizer.layers:
            cb = layer.codebook
            cb.embed.copy_(torch.randn(cb.embed.shape, generator=gen) * residual.std())
            cb.embed_avg.copy_(cb.embed)
            cb.cluster_size.fill_(1.0)
            cb.inited.fill_(1.0)
            residual = residual - layer.decode(layer.encode(residual))
    return model


def load_codec(path: str | os.PathLike | None, seed: int = 0) -> EncodecModel:
    """A transformers folder, an original `.th` state dict, or None (the seeded random default)."""
    if path is None:
        return random_codec(seed)
    path = Path(path)
    if path.is_dir():
        model = _load_hf_folder(path)
    else:
        model = _load_original_state(path)
    from .checkpoint import check_finite

    check_finite(model.state_dict().items(), path)
    return model.eval().requires_grad_(False)


def _load_hf_folder(path: Path) -> EncodecModel:
    """A transformers EnCodec folder, refused unless it is one: another model's folder (a uniform VALL-E
    folder has a config.json too) would otherwise load as EnCodec with freshly initialised weights."""
    from valle_export.paths import FolderKind, folder_kind, hf_model_type

    if hf_model_type(path) != "encodec":
        kind = folder_kind(path)
        what = "" if kind in (FolderKind.EMPTY, FolderKind.OTHER) else f"; it is {kind.value}"
        raise BadCheckpoint(f"not a transformers EnCodec folder (no config.json with model_type 'encodec'{what})",
                            path)
    try:
        model, info = EncodecModel.from_pretrained(path, output_loading_info=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise BadCheckpoint(f"cannot load EnCodec folder ({str(err).strip().splitlines()[0][:200]})", path) from None
    missing = sorted(info.get("missing_keys", ()))
    if missing or info.get("mismatched_keys"):
        bits = missing or [str(k) for k in info.get("mismatched_keys")]
        raise BadCheckpoint(f"EnCodec folder lacks weights ({len(bits)}: {', '.join(bits[:3])})", path)
    if model.config.sampling_rate != SAMPLE_RATE:
        raise BadCheckpoint(f"EnCodec at {model.config.sampling_rate} Hz; VALL-E needs the 24 kHz model", path)
    return model


def read_tensor_state(path: Path) -> dict[str, torch.Tensor]:
    """A `{name: tensor}` torch file loaded with weights_only (no code runs); anything else is one line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - weights_only runs no code; pickle / zip errors of every kind
        raise BadCheckpoint(f"cannot load as a weights-only torch file ({type(err).__name__})", path) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadCheckpoint("not a state dict of tensors", path)
    return state


def _load_original_state(path: Path) -> EncodecModel:
    """An original `encodec_24khz-*.th` state dict, every name and shape checked."""
    if not path.is_file():
        raise BadCheckpoint("file not found", path)
    state = read_tensor_state(path)
    model = EncodecModel(EncodecConfig())
    model.load_state_dict(original_state_to_hf(model, state, str(path)))
    return model


@torch.no_grad()
def encode(model: EncodecModel, wav: np.ndarray) -> np.ndarray:
    """Mono 24 kHz float audio [N] -> codes [8, ceil(N / 320)] (codebook-major, int64)."""
    x = torch.from_numpy(np.asarray(wav, np.float32))[None, None]
    emb = model.encoder(x)
    codes = model.quantizer.encode(emb, bandwidth=BANDWIDTH_KBPS)  # [nq, B, T]
    return codes[:, 0].numpy().astype(np.int64)


@torch.no_grad()
def decode(model: EncodecModel, codes: np.ndarray) -> np.ndarray:
    """Codes [8, T] -> mono 24 kHz float audio [T * 320]."""
    c = torch.from_numpy(np.asarray(codes, np.int64))[:, None]  # [nq, B, T]
    return model.decoder(model.quantizer.decode(c))[0, 0].numpy()


def _weight_norm_of(w: torch.Tensor) -> torch.Tensor:
    """The per-channel norm exactly as the weight-norm kernel computes it, so that g / ||v|| is 1.0."""
    g = torch.ones((w.shape[0],) + (1,) * (w.dim() - 1), dtype=w.dtype)
    return torch._weight_norm_interface(w, g, 0)[1].reshape(g.shape)


def codec_from_encodec_cpp(path: str | os.PathLike) -> EncodecModel:
    """Rebuild a transformers EncodecModel from an encodec.cpp weight file (weight norm unfolded as
    g = ||w||, v = w, which the parametrization turns back into w exactly)."""
    from valle_export import encodec_cpp_format as fmt

    f = fmt.read_encodec_cpp(path)
    fmt.check_against_loader(f, path)
    model = EncodecModel(EncodecConfig())
    table = _name_table(model)
    state = {}
    for name, array in f.tensors.items():
        w = torch.from_numpy(array.astype(np.float32))
        if name.endswith(".weight") and not name.split(".")[-2].startswith("lstm"):
            prefix = name[: -len(".weight")]
            state[table[prefix + ".weight_g"]] = _weight_norm_of(w)
            state[table[prefix + ".weight_v"]] = w
        else:
            state[table[name]] = w
    for layer in model.quantizer.layers:  # training-only buffers the file leaves out
        layer.codebook.inited.fill_(1.0)
    missing = set(model.state_dict()) - set(state)
    model.load_state_dict({**{k: v for k, v in model.state_dict().items() if k in missing}, **state})
    return model.eval().requires_grad_(False)
