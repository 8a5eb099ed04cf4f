"""EnCodec: exact weight mapping from the original package's names, ONNX encoder/decoder parity, and the
torch-free audio path (WAV in any format, resampling, prompt fitting)."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from valle_export import wav
from valle_export.cli import main
from valle_export.errors import BadCheckpoint, BadInput

from .compare import assert_logits_close, assert_tokens_equal
from .test_bad_inputs import assert_one_line_error

SR = 24000
DECODER_REL = 1e-4


@pytest.fixture(scope="module")
def ref_codec():
    from reference_model.codec import random_codec

    return random_codec(0)


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("codec")
    r = CliRunner().invoke(main, ["encodec", str(out), "-q"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def onnx_codec(codec_dir):
    from runtimes.codec import OnnxCodec

    return OnnxCodec(codec_dir, provider="cpu")


def make_test_signals():
    """Test signals: sines, noise, and a speech-like signal (glottal pulses through moving formants)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(1.3 * SR)) / SR
    sines = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1800 * t)
    noise = 0.2 * rng.standard_normal(len(t))
    f0 = 120 + 30 * np.sin(2 * np.pi * 3 * t)
    pulses = (np.diff(np.floor(np.cumsum(f0) / SR), prepend=0) > 0).astype(float)
    speech = np.zeros_like(t)
    for formant, bw in ((700, 80), (1200, 90), (2600, 120)):
        k = np.arange(400) / SR
        speech += np.convolve(pulses, np.exp(-np.pi * bw * k) * np.sin(2 * np.pi * formant * k), "same")
    speech *= 0.5 * np.abs(np.sin(2 * np.pi * 2 * t)) / np.abs(speech).max()
    return {"sines": sines, "noise": noise, "speech-like": speech}


def test_original_names_round_trip(ref_codec, tmp_path):
    """transformers -> original names -> `.th` file -> loaded back: 252 tensors, bit-identical decoding."""
    from reference_model.codec import decode, hf_state_to_original, load_codec

    original = hf_state_to_original(ref_codec)
    assert len(original) == 252
    assert "decoder.model.3.convtr.convtr.weight_g" in original
    assert "encoder.model.1.block.1.conv.conv.weight_v" in original
    assert "quantizer.vq.layers.31._codebook.embed" in original
    assert "encoder.model.13.lstm.weight_ih_l0" in original
    torch.save(original, tmp_path / "encodec_24khz-d7cc33bc.th")
    again = load_codec(tmp_path / "encodec_24khz-d7cc33bc.th")
    codes = np.random.default_rng(1).integers(0, 1024, (8, 30))
    assert np.array_equal(decode(again, codes), decode(ref_codec, codes))


def test_transformers_folder_round_trip(ref_codec, tmp_path):
    from reference_model.codec import decode, load_codec

    ref_codec.save_pretrained(tmp_path / "hf")
    codes = np.random.default_rng(2).integers(0, 1024, (8, 12))
    assert np.array_equal(decode(load_codec(tmp_path / "hf"), codes), decode(ref_codec, codes))


def test_bad_codec_weights(ref_codec, tmp_path):
    from reference_model.codec import hf_state_to_original, load_codec

    state = hf_state_to_original(ref_codec)
    del state["decoder.model.3.convtr.convtr.bias"]
    state["decoder.model.99.conv.conv.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.th")
    with pytest.raises(BadCheckpoint, match=r"missing 1 tensor\(s\): decoder.model.3.convtr.convtr.bias"):
        load_codec(tmp_path / "bad.th")
    (tmp_path / "junk.th").write_bytes(b"junk")
    assert_one_line_error(CliRunner().invoke(main, ["encodec", str(tmp_path / "junk.th"), str(tmp_path / "o")]),
                          "junk.th", "cannot load")
    assert not (tmp_path / "o").exists()


def test_random_codebooks_matter(ref_codec):
    """Every codebook changes the decoded audio: a wrong code layout cannot pass a parity test."""
    from reference_model.codec import decode

    codes = np.random.default_rng(3).integers(0, 1024, (8, 40))
    base = decode(ref_codec, codes)
    for level in range(8):
        changed = codes.copy()
        changed[level] = np.roll(changed[level], 1)
        assert np.abs(decode(ref_codec, changed) - base).max() > 0.01 * np.abs(base).max(), f"codebook {level}"


@pytest.mark.parametrize("frames", [7, 8, 75, 750])
def test_onnx_decoder_parity(ref_codec, onnx_codec, frames):
    from reference_model.codec import decode

    codes = np.random.default_rng(frames).integers(0, 1024, (8, frames))
    assert_logits_close(onnx_codec.decode(codes), decode(ref_codec, codes), DECODER_REL, f"decoder T={frames}")


@pytest.mark.parametrize("name", ["sines", "noise", "speech-like"])
def test_onnx_encoder_codes_identical(ref_codec, onnx_codec, name):
    from reference_model.codec import encode

    audio = make_test_signals()[name].astype(np.float32)
    codes = onnx_codec.encode(audio)
    assert codes.shape == (8, -(-len(audio) // 320))
    assert_tokens_equal(codes, encode(ref_codec, audio), f"encoder codes ({name})")
    assert len(np.unique(codes[0])) > 1, "degenerate test: one code for every frame"


@pytest.mark.parametrize("bits, float32", [(16, False), (32, True)])
def test_wav_write_read_round_trip(tmp_path, bits, float32):
    x = (0.5 * np.sin(np.arange(1000) / 7)).astype(np.float32)
    wav.write_wav(tmp_path / "a.wav", x, SR, float32=float32)
    y, rate = wav.read_wav(tmp_path / "a.wav")
    assert rate == SR and y.shape == (1000, 1)
    assert np.abs(y[:, 0] - x).max() <= (0 if float32 else 1 / 32767)


def _write_pcm(path, samples: np.ndarray, rate: int, bits: int):
    """A WAV written by hand (8/24-bit PCM, stereo) to test the reader against an independent writer."""
    import struct

    ch = samples.shape[1]
    if bits == 8:
        raw = (np.clip(samples, -1, 1) * 127 + 128).astype(np.uint8).tobytes()
    else:
        ints = (np.clip(samples, -1, 1) * (2 ** 23 - 1)).astype(np.int32).reshape(-1)
        raw = b"".join(int(v & 0xFFFFFF).to_bytes(3, "little") for v in ints)
    fmt = struct.pack("<HHIIHH", 1, ch, rate, rate * ch * bits // 8, ch * bits // 8, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(raw)) + raw
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


@pytest.mark.parametrize("bits", [8, 24])
def test_read_stereo_pcm_other_widths(tmp_path, bits):
    x = np.stack([np.linspace(-0.5, 0.5, 300), np.linspace(0.5, -0.5, 300)], 1)
    _write_pcm(tmp_path / "s.wav", x, 16000, bits)
    y, rate = wav.read_wav(tmp_path / "s.wav")
    assert rate == 16000 and y.shape == (300, 2)
    assert np.abs(y - x).max() < (1.5 / 127 if bits == 8 else 1e-6)
    assert np.abs(wav.to_mono(y)).max() < 0.02  # the two channels cancel


@pytest.mark.parametrize("rate_in", [44100, 16000, 22050, 48000])
def test_resampler_is_band_limited_and_accurate(rate_in):
    """A 1 kHz sine resampled to 24 kHz equals the analytic 24 kHz sine (edges excluded)."""
    n = rate_in  # one second
    x = np.sin(2 * np.pi * 1000 * np.arange(n) / rate_in).astype(np.float32)
    y = wav.resample(x, rate_in, SR)
    assert len(y) == SR
    want = np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)
    err = np.abs(y - want)[200:-200].max()
    assert err < 2e-3, f"{rate_in} Hz -> 24 kHz: max error {err:.2e}"
    if rate_in > SR:  # a tone above the new Nyquist must be removed, not aliased
        hi = np.sin(2 * np.pi * 15000 * np.arange(n) / rate_in).astype(np.float32)
        leak = np.abs(wav.resample(hi, rate_in, SR))[200:-200].max()
        assert leak < 0.02, f"15 kHz tone leaks {leak:.3f} after resampling to 24 kHz"


def test_prompt_from_44k_stereo_wav(tmp_path, onnx_codec):
    from runtimes.codec import fit_frames

    t = np.arange(int(1.2 * 44100)) / 44100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 300 * t), 0.3 * np.sin(2 * np.pi * 500 * t)], 1).astype(np.float32)
    _write_pcm(tmp_path / "p.wav", stereo, 44100, 24)
    prompt = onnx_codec.prompt_codes(tmp_path / "p.wav")
    assert prompt.shape == (225, 8)  # 1.2 s repeated to 3 s
    assert np.array_equal(prompt[:90], prompt[90:180])
    assert fit_frames(np.arange(300).reshape(300, 1), 225).shape == (225, 1)
    onnx_codec.write(tmp_path / "out.wav", prompt.T)
    y, rate = wav.read_wav(tmp_path / "out.wav")
    assert rate == SR and len(y) == 225 * 320


def test_bad_audio(tmp_path, onnx_codec):
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(BadInput, match="corrupt.wav.*no 'fmt' chunk"):
        wav.load_audio(tmp_path / "corrupt.wav", SR)
    (tmp_path / "text.wav").write_text("hello")
    with pytest.raises(BadInput, match="not a WAV file"):
        wav.load_audio(tmp_path / "text.wav", SR)
    wav.write_wav(tmp_path / "empty.wav", np.zeros(0), SR)
    with pytest.raises(BadInput, match="no samples"):
        wav.load_audio(tmp_path / "empty.wav", SR)
    wav.write_wav(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2]), SR, float32=True)
    with pytest.raises(BadInput, match="NaN"):
        wav.load_audio(tmp_path / "nan.wav", SR)
    with pytest.raises(BadInput, match="NaN"):
        onnx_codec.encode(np.full(3000, np.inf, np.float32))
    with pytest.raises(BadInput, match="too short to encode"):
        onnx_codec.encode(np.zeros(2000, np.float32))
    with pytest.raises(BadInput, match="codes must be"):
        onnx_codec.decode(np.zeros((4, 10), np.int64))
    with pytest.raises(BadInput, match="at least 7 frames"):
        onnx_codec.decode(np.zeros((8, 6), np.int64))
    with pytest.raises(BadInput, match="cannot resample"):
        wav.resample(np.zeros(10, np.float32), 0, SR)
