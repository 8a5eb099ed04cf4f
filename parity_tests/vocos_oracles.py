"""Two independent references for the Vocos tests: a numpy inverse STFT ("same" padding, np.fft.irfft, no
torch), and the `vocos` package's own model, imported without torchaudio.

The `vocos` 0.1.0 wheel imports torchaudio and `encodec` at package import (and scipy in spectral_ops), none
of which the decode path of vocos-encodec-24khz touches. They are stubbed in `sys.modules` only while `vocos`
is imported, then removed, so transformers never sees a fake torchaudio. Install the package with
`pip install --no-deps vocos==0.1.0` (never torchaudio: it breaks transformers here).
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import types

import numpy as np

_STUBS = ("torchaudio", "torchaudio.functional", "torchaudio.functional.functional", "encodec", "scipy")


def overlap_add(frames: np.ndarray, hop: int) -> np.ndarray:
    """frames [B, n_fft, T] -> [B, (T - 1) * hop + n_fft], contributions added in F.fold's order."""
    b, n_fft, t = frames.shape
    r = n_fft // hop
    blocks = frames.reshape(b, r, hop, t)
    out = np.zeros((b, t + r - 1, hop), frames.dtype)
    for j in range(r):
        out[:, j:j + t, :] += blocks[:, j].transpose(0, 2, 1)
    return out.reshape(b, -1)


def istft_same(spectrum: np.ndarray, window: np.ndarray, hop: int) -> np.ndarray:
    """Complex spectrum [B, n_fft/2 + 1, T] -> audio [B, hop * T], as Vocos's ISTFT(padding="same")."""
    n_fft, t = window.shape[0], spectrum.shape[-1]
    frames = np.fft.irfft(spectrum.astype(np.complex128), n=n_fft, axis=1) * window[None, :, None]
    y = overlap_add(frames, hop)
    envelope = overlap_add(np.broadcast_to(np.square(window.astype(np.float64))[None, :, None], (1, n_fft, t)).copy(),
                           hop)[0]
    pad = (n_fft - hop) // 2
    return (y[:, pad:-pad] / envelope[pad:-pad]).astype(np.float32)


def vocos_package_available() -> bool:
    return importlib.util.find_spec("vocos") is not None


@contextlib.contextmanager
def _scoped_stubs():
    saved = {name: sys.modules.get(name) for name in _STUBS}
    try:
        for name in _STUBS:
            if name == "scipy" and importlib.util.find_spec("scipy") is not None:
                continue  # the real one
            sys.modules[name] = types.ModuleType(name)

        def unused(*args, **kwargs):
            raise RuntimeError("torchaudio stub: the mel-spectrogram paths are not part of this test")

        sys.modules["torchaudio.functional.functional"]._hz_to_mel = unused
        sys.modules["torchaudio.functional.functional"]._mel_to_hz = unused
        sys.modules["encodec"].EncodecModel = None
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def package_model(state: dict):
    """The package's `Vocos` built as `from_hparams` does from the released config (without downloading
    EnCodec: only `quantizer.bins` of it is read by `codes_to_features`), loaded strictly with `state`."""
    import torch
    from types import SimpleNamespace

    with _scoped_stubs():
        from vocos.feature_extractors import EncodecFeatures
        from vocos.heads import ISTFTHead
        from vocos.models import VocosBackbone
        from vocos.pretrained import Vocos
    features = EncodecFeatures.__new__(EncodecFeatures)
    torch.nn.Module.__init__(features)
    features.codebook_weights = torch.nn.Parameter(torch.zeros_like(state["feature_extractor.codebook_weights"]),
                                                   requires_grad=False)
    features.bandwidths = [1.5, 3.0, 6.0, 12.0]
    features.encodec = SimpleNamespace(quantizer=SimpleNamespace(bins=1024))
    backbone = VocosBackbone(input_channels=128, dim=384, intermediate_dim=1152, num_layers=8,
                             adanorm_num_embeddings=4)
    head = ISTFTHead(dim=384, n_fft=1280, hop_length=320, padding="same")
    model = Vocos(features, backbone, head).eval()
    model.load_state_dict(state, strict=True)
    return model
