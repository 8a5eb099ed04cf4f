"""Vocos `charactr/vocos-encodec-24khz`, the original's default waveform decoder, in torch with the released
module and tensor names (so its `pytorch_model.bin` loads strictly), without the `vocos` package (whose
import needs torchaudio and `encodec`, which break this environment).

What it computes, unlike EnCodec's decoder: the codes' summed EnCodec codebook rows -> Conv1d -> adaptive
LayerNorm (scale / shift rows picked by a bandwidth id, which the original fixes from the number of levels)
-> 8 ConvNeXt blocks -> LayerNorm -> Linear to a log-magnitude and a phase per STFT bin -> inverse STFT
("same" padding). One frame of codes gives `hop` samples for any number of frames from 1 up.

Weights come from a released `pytorch_model.bin` (+ `config.yaml` beside it, checked: the mel-spectrogram
variant is refused by name) or are drawn with a seed; the random default takes its feature codebooks from
the default EnCodec of the same seed, as the released table holds EnCodec's own codebooks.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from valle_export.errors import BadCheckpoint, BadInput, UnsupportedModel

from . import codec

WEIGHTS_FILE = "pytorch_model.bin"
CONFIG_FILE = "config.yaml"


@dataclasses.dataclass(frozen=True)
class VocosSpec:
    """The released `vocos-encodec-24khz` hyper-parameters (its config.yaml), named once."""

    input_channels: int = 128  # EnCodec's latent width
    dim: int = 384
    intermediate_dim: int = 1152
    num_layers: int = 8
    bandwidths: tuple[float, ...] = (1.5, 3.0, 6.0, 12.0)  # kbps; one AdaLN row per bandwidth id
    n_fft: int = 1280
    hop: int = codec.HOP
    kernel: int = 7
    eps: float = 1e-6
    max_magnitude: float = 100.0  # exp(log-magnitude) is clipped here
    bins: int = 1024  # codes per EnCodec codebook
    stored_codebooks: int = 16  # EnCodec's first 16 codebooks (12 kbps) stacked in the feature table
    sample_rate: int = codec.SAMPLE_RATE

    @property
    def freq_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def trim(self) -> int:
        """Samples cut at each end by "same" padding: (n_fft - hop) / 2."""
        return (self.n_fft - self.hop) // 2


SPEC = VocosSpec()
# levels -> bandwidth id, as the original's `_load_vocos_model` (any other level count keeps id 2)
_BANDWIDTH_IDS = {2: 0, 4: 1, 8: 2}
DEFAULT_BANDWIDTH_ID = 2


def bandwidth_id_for(levels: int) -> int:
    return _BANDWIDTH_IDS.get(levels, DEFAULT_BANDWIDTH_ID)


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, then a scale and a shift chosen by the bandwidth id."""

    def __init__(self, spec: VocosSpec):
        super().__init__()
        self.eps, self.dim = spec.eps, spec.dim
        self.scale = nn.Embedding(len(spec.bandwidths), spec.dim)
        self.shift = nn.Embedding(len(spec.bandwidths), spec.dim)

    def forward(self, x: torch.Tensor, bandwidth_id: torch.Tensor) -> torch.Tensor:  # x [B, T, dim]
        x = nn.functional.layer_norm(x, (self.dim,), eps=self.eps)
        return x * self.scale(bandwidth_id) + self.shift(bandwidth_id)


class ConvNeXtBlock(nn.Module):
    """x + gamma * pwconv2(GELU(pwconv1(AdaLN(dwconv(x))))), exact (erf) GELU."""

    def __init__(self, spec: VocosSpec):
        super().__init__()
        self.dwconv = nn.Conv1d(spec.dim, spec.dim, spec.kernel, padding=spec.kernel // 2, groups=spec.dim)
        self.norm = AdaLayerNorm(spec)
        self.pwconv1 = nn.Linear(spec.dim, spec.intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(spec.intermediate_dim, spec.dim)
        self.gamma = nn.Parameter(torch.full((spec.dim,), 1.0 / spec.num_layers))

    def forward(self, x: torch.Tensor, bandwidth_id: torch.Tensor) -> torch.Tensor:  # x [B, dim, T]
        y = self.norm(self.dwconv(x).transpose(1, 2), bandwidth_id)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.transpose(1, 2)


class VocosBackbone(nn.Module):
    def __init__(self, spec: VocosSpec):
        super().__init__()
        self.embed = nn.Conv1d(spec.input_channels, spec.dim, spec.kernel, padding=spec.kernel // 2)
        self.norm = AdaLayerNorm(spec)
        self.convnext = nn.ModuleList(ConvNeXtBlock(spec) for _ in range(spec.num_layers))
        self.final_layer_norm = nn.LayerNorm(spec.dim, eps=spec.eps)

    def forward(self, features: torch.Tensor, bandwidth_id: torch.Tensor) -> torch.Tensor:
        """features [B, 128, T] -> hidden [B, T, dim]."""
        x = self.norm(self.embed(features).transpose(1, 2), bandwidth_id).transpose(1, 2)
        for block in self.convnext:
            x = block(x, bandwidth_id)
        return self.final_layer_norm(x.transpose(1, 2))


class ISTFT(nn.Module):
    """Inverse STFT with "same" padding, as the package computes it: irfft, window, overlap-add (fold), trim
    (n_fft - hop) / 2 at each end, divide by the overlap-added squared window. (torch.istft cannot: its
    NOLA check fails at the untrimmed edges.)"""

    def __init__(self, spec: VocosSpec):
        super().__init__()
        self.n_fft, self.hop, self.trim = spec.n_fft, spec.hop, spec.trim
        self.register_buffer("window", torch.hann_window(spec.n_fft))

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:  # complex [B, n_fft/2 + 1, T] -> [B, hop * T]
        frames = torch.fft.irfft(spectrum, self.n_fft, dim=1, norm="backward") * self.window[None, :, None]
        t = spectrum.shape[-1]
        size = (1, (t - 1) * self.hop + self.n_fft)
        fold = dict(output_size=size, kernel_size=(1, self.n_fft), stride=(1, self.hop))
        y = nn.functional.fold(frames, **fold)[:, 0, 0, self.trim:-self.trim]
        squared = self.window.square().expand(1, t, -1).transpose(1, 2)
        envelope = nn.functional.fold(squared, **fold).squeeze()[self.trim:-self.trim]
        return y / envelope


class ISTFTHead(nn.Module):
    def __init__(self, spec: VocosSpec):
        super().__init__()
        self.max_magnitude = spec.max_magnitude
        self.out = nn.Linear(spec.dim, spec.n_fft + 2)
        self.istft = ISTFT(spec)

    def spectrum(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, dim] -> complex spectrum [B, n_fft/2 + 1, T]."""
        log_mag, phase = self.out(hidden).transpose(1, 2).chunk(2, dim=1)
        mag = torch.clip(torch.exp(log_mag), max=self.max_magnitude)
        return mag * (torch.cos(phase) + 1j * torch.sin(phase))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.istft(self.spectrum(hidden))


class EncodecFeatures(nn.Module):
    """The feature table: EnCodec's first 16 codebooks stacked; level l reads rows l * bins + code."""

    def __init__(self, spec: VocosSpec):
        super().__init__()
        self.bins = spec.bins
        rows = spec.stored_codebooks * spec.bins
        self.codebook_weights = nn.Parameter(torch.zeros(rows, spec.input_channels), requires_grad=False)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, levels, T] -> features [B, 128, T] (the package's `codes_to_features`)."""
        offsets = torch.arange(codes.shape[1], device=codes.device) * self.bins
        rows = nn.functional.embedding(codes + offsets[None, :, None], self.codebook_weights)  # [B, L, T, 128]
        return rows.sum(dim=1).transpose(1, 2)


class Vocos(nn.Module):
    def __init__(self, spec: VocosSpec = SPEC):
        super().__init__()
        self.spec = spec
        self.feature_extractor = EncodecFeatures(spec)
        self.backbone = VocosBackbone(spec)
        self.head = ISTFTHead(spec)

    def forward(self, codes: torch.Tensor, bandwidth_id: int | None = None) -> torch.Tensor:
        """codes [B, levels, T] int64 -> audio [B, hop * T]; the bandwidth id defaults to the original's for
        `levels`."""
        ident = torch.tensor([bandwidth_id_for(codes.shape[1]) if bandwidth_id is None else bandwidth_id])
        return self.head(self.backbone(self.feature_extractor(codes), ident))


def check_codes(codes: np.ndarray, spec: VocosSpec = SPEC) -> np.ndarray:
    """Codes [levels, T] or [B, levels, T] as int64, refused (one line) when they cannot index the table."""
    codes = np.asarray(codes)
    if codes.ndim not in (2, 3) or codes.shape[-2] > spec.stored_codebooks or codes.shape[-1] < 1:
        raise BadInput(f"codes must be [levels <= {spec.stored_codebooks}, frames >= 1], got {codes.shape}")
    if codes.min() < 0 or codes.max() >= spec.bins:
        raise BadInput(f"codes out of range 0..{spec.bins - 1}: {codes.min()}..{codes.max()}")
    return codes.astype(np.int64)


@torch.no_grad()
def decode(model: Vocos, codes: np.ndarray, bandwidth_id: int | None = None) -> np.ndarray:
    """Codes [levels, T] -> audio [hop * T], or [B, levels, T] -> [B, hop * T] (float32, 24 kHz)."""
    codes = check_codes(codes, model.spec)
    batch = torch.from_numpy(codes if codes.ndim == 3 else codes[None])
    audio = model(batch, bandwidth_id).numpy()
    return audio if codes.ndim == 3 else audio[0]


# --- the seeded random default ------------------------------------------------------------------------------
def _redraw(model: Vocos, gen: torch.Generator) -> None:
    """Weights that exercise everything: linear / conv weights N(0, 1/fan_in), biases N(0, 0.1), AdaLN rows
    1 + N(0, 0.2) and N(0, 0.2) (so bandwidth ids differ), gamma 0.125 + N(0, 0.05), and a ramp of -3..+6
    on the log-magnitude bias so that some bins reach the magnitude clip. (The package's own init makes every
    bandwidth id identical and never clips.)"""
    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(mean + std * torch.randn(t.shape, generator=gen))

    for name, p in model.named_parameters():
        if name.startswith("feature_extractor."):
            continue
        if name.endswith(("scale.weight", "shift.weight")):
            normal(p, 0.2, 1.0 if "scale" in name else 0.0)
        elif name.endswith("gamma"):
            normal(p, 0.05, 0.125)
        elif name.endswith("bias"):
            normal(p, 0.1)
        elif p.dim() > 1:
            normal(p, float(np.prod(p.shape[1:])) ** -0.5)
        else:  # final LayerNorm weight
            normal(p, 0.1, 1.0)
    bins = model.spec.freq_bins
    model.head.out.bias[:bins] += torch.linspace(-3.0, 6.0, bins)


def random_vocos(seed: int = 0) -> Vocos:
    """Seeded random weights; the feature table holds the codebooks of `codec.random_codec(seed)`, so both
    decoders read the same latent space (as the released pair does)."""
    model = Vocos().eval().requires_grad_(False)
    encodec = codec.random_codec(seed)
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        _redraw(model, gen)
        books = [layer.codebook.embed for layer in encodec.quantizer.layers[: model.spec.stored_codebooks]]
        model.feature_extractor.codebook_weights.copy_(torch.cat(books))
    return model


# --- the released files ------------------------------------------------------------------------------------
def load_vocos(path: str | os.PathLike | None, seed: int = 0) -> Vocos:
    """A released `pytorch_model.bin` (with `config.yaml` beside it, when present), a folder holding them, or
    None (the seeded random default)."""
    if path is None:
        return random_vocos(seed)
    path = Path(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if not weights.is_file():
        raise BadCheckpoint(f"file not found (a Vocos {WEIGHTS_FILE}, or a folder with one)", weights)
    if (weights.parent / CONFIG_FILE).is_file():
        check_config(weights.parent / CONFIG_FILE)
    state = _read_state(weights)
    model = Vocos()
    _check_names(model, state, weights)
    from .checkpoint import check_finite

    check_finite(state.items(), weights)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval().requires_grad_(False)


MEL_VARIANT = ("the mel-spectrogram Vocos (vocos-mel-24khz) decodes mel features of audio, not EnCodec codes; "
               "VALL-E decodes with charactr/vocos-encodec-24khz")


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    state = codec.read_tensor_state(path)
    if any(str(k).startswith("feature_extractor.mel_spec.") for k in state):
        raise UnsupportedModel(MEL_VARIANT, path)
    return state


def _check_names(model: Vocos, state: dict[str, torch.Tensor], path: Path) -> None:
    """Every released name present with its shape, nothing else; all problems in one line."""
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong = [f"{k} {tuple(state[k].shape)} (want {tuple(v.shape)})" for k, v in target.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    bits = []
    if missing:
        bits.append(f"missing {len(missing)}: {', '.join(missing[:4])}")
    if unexpected:
        bits.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:4])}")
    if wrong:
        bits.append(f"shape mismatch {len(wrong)}: {', '.join(wrong[:3])}")
    if bits:
        raise BadCheckpoint("not a vocos-encodec-24khz state dict (" + "; ".join(bits) + ")", path)


def _expected_config(spec: VocosSpec) -> dict[str, tuple[str, dict]]:
    """config.yaml section -> (class_path, the init_args that decide the computation)."""
    return {
        "feature_extractor": ("vocos.feature_extractors.EncodecFeatures",
                              {"encodec_model": "encodec_24khz", "bandwidths": list(spec.bandwidths)}),
        "backbone": ("vocos.models.VocosBackbone",
                     {"input_channels": spec.input_channels, "dim": spec.dim, "intermediate_dim": spec.intermediate_dim,
                      "num_layers": spec.num_layers, "adanorm_num_embeddings": len(spec.bandwidths)}),
        "head": ("vocos.heads.ISTFTHead", {"dim": spec.dim, "n_fft": spec.n_fft, "hop_length": spec.hop,
                                           "padding": "same"}),
    }


# the package's defaults for the init_args above that a config may leave out (the others are required)
_PACKAGE_DEFAULTS = {"encodec_model": "encodec_24khz", "bandwidths": [1.5, 3.0, 6.0, 12.0], "padding": "same",
                     "adanorm_num_embeddings": None}


def check_config(path: Path, spec: VocosSpec = SPEC) -> None:
    """The released config.yaml's classes and hyper-parameters; the mel variant refused by name."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise BadCheckpoint(f"not a YAML config ({type(err).__name__})", path) from None
    if not isinstance(config, dict):
        raise BadCheckpoint("not a Vocos config (no feature_extractor / backbone / head sections)", path)
    features = config.get("feature_extractor")
    if isinstance(features, dict) and str(features.get("class_path", "")).endswith("MelSpectrogramFeatures"):
        raise UnsupportedModel(MEL_VARIANT, path)
    problems = []
    for section, (class_path, args) in _expected_config(spec).items():
        part = config.get(section)
        if not isinstance(part, dict):
            problems.append(f"no {section} section")
            continue
        if part.get("class_path") != class_path:
            problems.append(f"{section} is {part.get('class_path')!r}, not {class_path}")
        given = part.get("init_args") if isinstance(part.get("init_args"), dict) else {}
        for key, want in args.items():
            value = given.get(key, _PACKAGE_DEFAULTS.get(key, "(missing)"))
            if value != want:
                problems.append(f"{section}.{key} = {value!r} (want {want!r})")
    if problems:
        raise UnsupportedModel(f"not the vocos-encodec-24khz configuration ({'; '.join(problems[:4])})", path)
