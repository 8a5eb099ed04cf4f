"""The encodec.cpp weight file: every tensor against the loader's table, an exact read-back into
transformers' EncodecModel, the f16 rounding bound, inspect, and bad files."""
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from valle_export import encodec_cpp_format as fmt
from valle_export.cli import main
from valle_export.errors import BadInput

from .compare import assert_logits_close
from .test_bad_inputs import assert_one_line_error

F16_DECODE_REL = 1e-3  # measured 2.4e-4 (max abs waveform error / max |reference|) on the random codec

# What encodec.cpp's loader creates (encodec_load_model_weights), spot-checked independently of the table
# function: name -> (type, dims innermost-first).
LOADER_SPOT_CHECKS = {
    "encoder.model.0.conv.conv.weight": ("f16", (7, 1, 32)),
    "encoder.model.1.block.3.conv.conv.weight": ("f16", (1, 16, 32)),  # kernel size 1 stays 3-D
    "encoder.model.12.conv.conv.weight": ("f16", (16, 256, 512)),
    "encoder.model.13.lstm.weight_hh_l1": ("f16", (512, 2048)),
    "encoder.model.13.lstm.bias_ih_l0": ("f32", (2048,)),
    "encoder.model.15.conv.conv.weight": ("f16", (7, 512, 128)),
    "decoder.model.3.convtr.convtr.weight": ("f16", (16, 256, 512)),
    "decoder.model.12.convtr.convtr.bias": ("f32", (32,)),
    "decoder.model.15.conv.conv.weight": ("f16", (7, 32, 1)),
    "quantizer.vq.layers.31._codebook.embed": ("f32", (128, 1024)),
}


@pytest.fixture(scope="module")
def codec():
    from reference_model.codec import random_codec

    return random_codec(0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("ecpp")
    for outtype in ("f16", "f32"):
        r = CliRunner().invoke(main, ["encodec-cpp", "-o", str(out / f"{outtype}.bin"), "--outtype", outtype, "-q"])
        assert r.exit_code == 0, r.output
    return out


def test_every_tensor_matches_the_loader(files):
    f = fmt.read_encodec_cpp(files / "f16.bin")
    assert (files / "f16.bin").stat().st_size == pytest.approx(46.5e6, rel=0.01)
    assert f.hparams == fmt.Hparams(ftype=1) and f.hparams.bandwidth == 6
    assert len(f.tensors) == 120
    assert not any(k.endswith(("weight_g", "weight_v", "inited", "cluster_size", "embed_avg")) for k in f.tensors)
    fmt.check_against_loader(f)
    for name, (ttype, dims) in LOADER_SPOT_CHECKS.items():
        assert fmt.TYPE_NAMES[f.types[name]] == ttype and tuple(reversed(f.tensors[name].shape)) == dims, name
    table = fmt.expected_tensors(f.hparams)
    total = sum(int(np.prod(d)) * (2 if t == fmt.F16 else 4) + 12 + 4 * len(d) + len(n) for n, (t, d) in table.items())
    assert total + 40 == (files / "f16.bin").stat().st_size
    f32 = fmt.read_encodec_cpp(files / "f32.bin")
    assert set(f32.types.values()) == {fmt.F32}


def test_file_decodes_like_the_source(files, codec):
    from reference_model.codec import codec_from_encodec_cpp, decode

    codes = np.random.default_rng(5).integers(0, 1024, (8, 60))
    want = decode(codec, codes)
    exact = decode(codec_from_encodec_cpp(files / "f32.bin"), codes)
    assert np.array_equal(exact, want), f"f32 round trip differs by {np.abs(exact - want).max():.3e}"
    half = decode(codec_from_encodec_cpp(files / "f16.bin"), codes)
    assert_logits_close(half, want, F16_DECODE_REL, "f16 encodec.cpp file vs source")
    swapped = codes.copy()
    swapped[[1, 6]] = swapped[[6, 1]]
    rel = np.abs(decode(codec, swapped) - want).max() / np.abs(want).max()
    assert rel > 10 * F16_DECODE_REL, f"a wrong code layout changes the audio only by {rel:.2e}"


def test_original_th_weights_convert(tmp_path, codec):
    import torch

    from reference_model.codec import codec_from_encodec_cpp, decode, hf_state_to_original

    torch.save(hf_state_to_original(codec), tmp_path / "encodec_24khz-d7cc33bc.th")
    r = CliRunner().invoke(main, ["encodec-cpp", str(tmp_path / "encodec_24khz-d7cc33bc.th"), "-o",
                                  str(tmp_path / "e.bin"), "--outtype", "f32", "-q"])
    assert r.exit_code == 0 and "ship f16" in r.output
    codes = np.random.default_rng(6).integers(0, 1024, (8, 20))
    assert np.array_equal(decode(codec_from_encodec_cpp(tmp_path / "e.bin"), codes), decode(codec, codes))


def test_bad_files(files, tmp_path):
    data = (files / "f16.bin").read_bytes()
    (tmp_path / "trunc.bin").write_bytes(data[: len(data) // 3])
    with pytest.raises(BadInput, match="truncated"):
        fmt.read_encodec_cpp(tmp_path / "trunc.bin")
    (tmp_path / "magic.bin").write_bytes(b"GGUF" + data[4:])
    with pytest.raises(BadInput, match="wrong magic"):
        fmt.read_encodec_cpp(tmp_path / "magic.bin")
    name = b"decoder.model.99.conv.conv.bias"
    extra = struct.pack("<4i", 1, len(name), 0, 2) + name + np.zeros(2, "<f4").tobytes()
    (tmp_path / "unknown.bin").write_bytes(data + extra)
    with pytest.raises(BadInput, match="unknown tensor 'decoder.model.99.conv.conv.bias'"):
        fmt.read_encodec_cpp(tmp_path / "unknown.bin")
    assert_one_line_error(CliRunner().invoke(main, ["inspect", str(tmp_path / "magic.bin")]), "not a readable GGUF")
    assert_one_line_error(CliRunner().invoke(main, ["inspect", str(tmp_path / "trunc.bin")]), "truncated")


def test_inspect_every_output_kind(files, gguf_export, onnx_export):
    runner = CliRunner()
    r = runner.invoke(main, ["inspect", str(files / "f16.bin")])
    assert r.exit_code == 0 and "tensors (120)" in r.output and "bandwidth=6" in r.output
    r = runner.invoke(main, ["inspect", str(gguf_export())])
    assert r.exit_code == 0 and "general.architecture" in r.output and "token_embd.weight" in r.output
    r = runner.invoke(main, ["inspect", str(onnx_export() / "backbone.onnx")])
    assert r.exit_code == 0 and "attention_mask" in r.output and "valle.layout" in r.output
