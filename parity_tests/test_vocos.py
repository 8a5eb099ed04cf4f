"""Vocos (the original's default decoder): the torch model's released names and file checks, the ONNX graph
(inverse STFT inside) vs torch, a numpy inverse STFT oracle, and the `vocos` package's own forward."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from valle_export import graphs
from valle_export.cli import main
from valle_export.errors import BadCheckpoint, BadInput, UnsupportedModel

from .compare import assert_logits_close
from .test_bad_inputs import assert_one_line_error
from .vocos_oracles import istft_same, package_model, vocos_package_available

ONNX_REL = 1e-5  # measured ~1e-6 (design section 8)
PACKAGE_REL = 1e-6  # the same torch ops: measured 0

RELEASED_CONFIG = """\
feature_extractor:
  class_path: vocos.feature_extractors.EncodecFeatures
  init_args:
    encodec_model: encodec_24khz
    bandwidths: [1.5, 3.0, 6.0, 12.0]
    train_codebooks: false

backbone:
  class_path: vocos.models.VocosBackbone
  init_args:
    input_channels: 128
    dim: 384
    intermediate_dim: 1152
    num_layers: 8
    adanorm_num_embeddings: 4

head:
  class_path: vocos.heads.ISTFTHead
  init_args:
    dim: 384
    n_fft: 1280
    hop_length: 320
    padding: same
"""
MEL_CONFIG = """\
feature_extractor:
  class_path: vocos.feature_extractors.MelSpectrogramFeatures
  init_args: {sample_rate: 24000, n_fft: 1024, hop_length: 256, n_mels: 100, padding: center}
backbone:
  class_path: vocos.models.VocosBackbone
  init_args: {input_channels: 100, dim: 512, intermediate_dim: 1536, num_layers: 8}
head:
  class_path: vocos.heads.ISTFTHead
  init_args: {dim: 512, n_fft: 1024, hop_length: 256, padding: same}
"""


@pytest.fixture(scope="module")
def ref_vocos():
    from reference_model.vocos import random_vocos

    return random_vocos(0)


@pytest.fixture(scope="module")
def vocos_dir(tmp_path_factory):
    """`valle-export vocos -o DIR` into a folder that already holds EnCodec graphs (a codec folder): allowed,
    and those files are left alone."""
    out = tmp_path_factory.mktemp("vocos")
    (out / graphs.CODEC_ENCODER_FILE).write_bytes(b"stand-in")
    r = CliRunner().invoke(main, ["vocos", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert (out / graphs.CODEC_ENCODER_FILE).read_bytes() == b"stand-in"
    return out


@pytest.fixture(scope="module")
def onnx_vocos(vocos_dir):
    from runtimes.codec import OnnxDecoder

    return OnnxDecoder(vocos_dir / graphs.VOCOS_DECODER_FILE, provider="cpu")


def save_released(model, folder, config=RELEASED_CONFIG):
    """The released layout: `state_dict(keep_vars=True)` saved with torch.save, config.yaml beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(keep_vars=True), folder / "pytorch_model.bin")
    if config is not None:
        (folder / "config.yaml").write_text(config)
    return folder / "pytorch_model.bin"


def test_released_names_and_sizes(ref_vocos):
    state = ref_vocos.state_dict()
    assert len(state) == 82 and sum(v.numel() for v in state.values()) == 10_082_690
    want = {"feature_extractor.codebook_weights": (16384, 128), "backbone.embed.weight": (384, 128, 7),
            "backbone.norm.scale.weight": (4, 384), "backbone.convnext.7.dwconv.weight": (384, 1, 7),
            "backbone.convnext.0.norm.shift.weight": (4, 384), "backbone.convnext.3.pwconv1.weight": (1152, 384),
            "backbone.convnext.5.gamma": (384,), "backbone.final_layer_norm.bias": (384,),
            "head.out.weight": (1282, 384), "head.istft.window": (1280,)}
    for name, shape in want.items():
        assert tuple(state[name].shape) == shape, name
    assert torch.equal(state["head.istft.window"], torch.hann_window(1280))


def test_codebooks_come_from_default_encodec(ref_vocos):
    """The feature table is EnCodec's first 16 codebooks, so the summed features of 8 levels are exactly
    EnCodec's quantized latent (both decoders read the same latent space, as the released pair does)."""
    from reference_model.codec import random_codec

    encodec = random_codec(0)
    table = ref_vocos.feature_extractor.codebook_weights
    for k in range(16):
        assert torch.equal(table[k * 1024:(k + 1) * 1024], encodec.quantizer.layers[k].codebook.embed), k
    codes = torch.from_numpy(np.random.default_rng(5).integers(0, 1024, (1, 8, 30)))
    latent = encodec.quantizer.decode(codes.transpose(0, 1))
    features = ref_vocos.feature_extractor(codes)
    assert_logits_close(features.numpy(), latent.numpy(), 1e-6, "features vs EnCodec latent")


@pytest.mark.parametrize("as_folder", [False, True])
def test_released_file_round_trip(ref_vocos, tmp_path, as_folder):
    from reference_model.vocos import decode, load_vocos

    path = save_released(ref_vocos, tmp_path / "vocos-encodec-24khz")
    again = load_vocos(path.parent if as_folder else path)
    codes = np.random.default_rng(1).integers(0, 1024, (8, 12))
    assert np.array_equal(decode(again, codes), decode(ref_vocos, codes))


def test_bad_state_dict_in_one_line(ref_vocos, tmp_path):
    from reference_model.vocos import load_vocos

    state = ref_vocos.state_dict()
    del state["backbone.convnext.3.gamma"]
    state["backbone.convnext.9.gamma"] = torch.zeros(384)
    state["head.out.bias"] = torch.zeros(1000)
    torch.save(state, tmp_path / "bad.bin")
    with pytest.raises(BadCheckpoint) as err:
        load_vocos(tmp_path / "bad.bin")
    line = str(err.value)
    for needle in ("missing 1: backbone.convnext.3.gamma", "unexpected 1: backbone.convnext.9.gamma",
                   "head.out.bias (1000,) (want (1282,))"):
        assert needle in line, line
    assert "\n" not in line
    r = CliRunner().invoke(main, ["vocos", str(tmp_path / "bad.bin"), "-o", str(tmp_path / "out")])
    assert_one_line_error(r, "bad.bin", "missing 1")
    (tmp_path / "junk.bin").write_bytes(b"junk")
    assert_one_line_error(CliRunner().invoke(main, ["vocos", str(tmp_path / "junk.bin"), "-o", str(tmp_path / "out")]),
                          "junk.bin", "cannot load")
    assert not (tmp_path / "out").exists()


def test_mel_variant_refused_by_name(ref_vocos, tmp_path):
    from reference_model.vocos import load_vocos

    save_released(ref_vocos, tmp_path / "mel", MEL_CONFIG)
    with pytest.raises(UnsupportedModel, match="mel-spectrogram Vocos"):
        load_vocos(tmp_path / "mel")
    mel_state = {"feature_extractor.mel_spec.mel_scale.fb": torch.zeros(513, 100), "head.out.bias": torch.zeros(1026)}
    torch.save(mel_state, tmp_path / "mel_only.bin")
    r = CliRunner().invoke(main, ["vocos", str(tmp_path / "mel_only.bin"), "-o", str(tmp_path / "out")])
    assert_one_line_error(r, "mel_only.bin", "mel-spectrogram Vocos")


def test_other_configuration_refused(ref_vocos, tmp_path):
    from reference_model.vocos import load_vocos

    save_released(ref_vocos, tmp_path / "v", RELEASED_CONFIG.replace("num_layers: 8", "num_layers: 12"))
    with pytest.raises(UnsupportedModel, match=r"backbone.num_layers = 12 \(want 8\)"):
        load_vocos(tmp_path / "v")
    (tmp_path / "v" / "config.yaml").write_text("feature_extractor: [unclosed")
    with pytest.raises(BadCheckpoint, match="not a YAML config"):
        load_vocos(tmp_path / "v")


def test_output_folder_kinds(tmp_path, demo_checkpoint):
    """Refused before any work: a checkpoint folder, a uniform or transformers folder (an ONNX export or
    codec folder is allowed: the runtime finds the graph beside the model)."""
    ckpt = demo_checkpoint("gelu", "segmented", "noncausal")
    assert_one_line_error(CliRunner().invoke(main, ["vocos", "-o", str(ckpt)]), "checkpoint folder")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "encodec"}))
    assert_one_line_error(CliRunner().invoke(main, ["vocos", "-o", str(tmp_path / "hf")]), "transformers EnCodec")


@pytest.mark.parametrize("frames", [1, 2, 3, 750])
def test_numpy_istft_oracle_matches_torch(ref_vocos, frames):
    """The package's ISTFT (irfft + fold) vs an independent numpy one, on spectra with non-zero imaginary
    parts at DC and Nyquist and magnitudes at the clip."""
    rng = np.random.default_rng(frames)
    mag = np.minimum(np.exp(rng.uniform(-3, 6, (2, 641, frames))), 100.0)
    spectrum = (mag * np.exp(1j * rng.uniform(-np.pi, np.pi, mag.shape))).astype(np.complex64)
    want = ref_vocos.head.istft(torch.from_numpy(spectrum)).numpy()
    got = istft_same(spectrum, ref_vocos.head.istft.window.numpy(), 320)
    assert_logits_close(got, want, 1e-6, f"numpy iSTFT T={frames}")


def test_head_oracle(ref_vocos):
    """Torch head = numpy iSTFT of the torch spectrum (the reference's iSTFT is the package's)."""
    from reference_model.vocos import decode

    codes = np.random.default_rng(8).integers(0, 1024, (1, 8, 40))
    with torch.no_grad():
        hidden = ref_vocos.backbone(ref_vocos.feature_extractor(torch.from_numpy(codes)), torch.tensor([2]))
        spectrum = ref_vocos.head.spectrum(hidden).numpy()
    got = istft_same(spectrum, ref_vocos.head.istft.window.numpy(), 320)
    assert_logits_close(got, decode(ref_vocos, codes), 1e-6, "numpy head")


@pytest.mark.parametrize("frames", [1, 7, 151, 750])
def test_onnx_parity(ref_vocos, onnx_vocos, frames):
    from reference_model.vocos import decode

    codes = np.random.default_rng(frames).integers(0, 1024, (8, frames))
    got = onnx_vocos.decode(codes)
    assert got.shape == (320 * frames,)
    assert_logits_close(got, decode(ref_vocos, codes), ONNX_REL, f"vocos ONNX T={frames}")


def test_onnx_parity_batch_2(ref_vocos, onnx_vocos):
    from reference_model.vocos import decode

    codes = np.random.default_rng(11).integers(0, 1024, (2, 8, 37))
    got = onnx_vocos.decode(codes)
    assert got.shape == (2, 320 * 37)
    assert_logits_close(got, decode(ref_vocos, codes), ONNX_REL, "vocos ONNX batch 2")
    assert_logits_close(got[1], decode(ref_vocos, codes[1]), ONNX_REL, "vocos ONNX batch row 1 alone")


def test_bandwidth_id(ref_vocos, onnx_vocos):
    """Fixed from the level count as the original (2 -> 0, 4 -> 1, 8 -> 2, else 2); ids 1 and 2 decode far
    apart, and the graph decodes as id 2 (not 1)."""
    from reference_model.vocos import bandwidth_id_for, decode

    assert [bandwidth_id_for(n) for n in (1, 2, 3, 4, 8, 16)] == [2, 0, 2, 1, 2, 2]
    codes = np.random.default_rng(4).integers(0, 1024, (8, 60))
    id2, id1 = decode(ref_vocos, codes, 2), decode(ref_vocos, codes, 1)
    apart = np.abs(id1 - id2).max() / np.abs(id2).max()
    assert apart > 0.1, f"bandwidth ids 1 and 2 differ by only {apart:.3e}"
    got = onnx_vocos.decode(codes)
    assert_logits_close(got, id2, ONNX_REL, "graph vs id 2")
    assert np.abs(got - id1).max() / np.abs(id1).max() > 100 * ONNX_REL


def test_graph_interface_and_metadata(vocos_dir, onnx_vocos):
    spec = graphs.vocos_decoder_spec(8)
    session = onnx_vocos.session
    assert [i.name for i in session.get_inputs()] == spec.input_names
    assert [o.name for o in session.get_outputs()] == spec.output_names
    assert [tuple(i.shape) for i in session.get_inputs()] == [t.dims for t in spec.inputs]
    info = json.loads(session.get_modelmeta().custom_metadata_map[graphs.META_CODEC])
    assert info == {"decoder": "vocos", "sample_rate": 24000, "frame_rate": 75, "codebooks": 8, "hop": 320,
                    "n_fft": 1280, "bandwidth_id": 2, "min_frames": 1, "random_weights": True}
    assert (onnx_vocos.name, onnx_vocos.min_frames) == ("vocos", 1)
    ops = {n.op_type for n in __import__("onnx").load(str(vocos_dir / graphs.VOCOS_DECODER_FILE)).graph.node}
    assert not ops & {"DFT", "STFT", "Col2Im"}, ops  # real-valued ops only: MatMul + Pad overlap-add


def test_out_of_range_codes_refused(ref_vocos, onnx_vocos):
    from reference_model.vocos import decode

    for bad in (1024, -1):
        codes = np.zeros((8, 5), np.int64)
        codes[3, 2] = bad
        for fn in (onnx_vocos.decode, lambda c: decode(ref_vocos, c)):
            with pytest.raises(BadInput, match=r"codes out of range 0\.\.1023") as err:
                fn(codes)
            assert "\n" not in str(err.value)
    with pytest.raises(BadInput, match=r"codes must be \[8, frames\]"):
        onnx_vocos.decode(np.zeros((4, 5), np.int64))


@pytest.mark.skipif(not vocos_package_available(),
                    reason="vocos not installed (pip install --no-deps vocos==0.1.0; never torchaudio)")
@pytest.mark.parametrize("frames", [1, 7, 50])
def test_matches_vocos_package(ref_vocos, frames):
    """Our torch model vs the package's own `decode(codes_to_features(codes), bandwidth_id)` on the same
    random weights, loaded strictly into the package's model."""
    import sys

    from reference_model.vocos import decode

    package = package_model(ref_vocos.state_dict())
    assert "torchaudio" not in sys.modules and "encodec" not in sys.modules
    codes = np.random.default_rng(frames).integers(0, 1024, (8, frames))
    for ident in (2, 1):
        want = package.decode(package.codes_to_features(torch.from_numpy(codes)),
                              bandwidth_id=torch.tensor([ident])).numpy()[0]
        assert_logits_close(decode(ref_vocos, codes, ident), want, PACKAGE_REL, f"vs package T={frames} id {ident}")
