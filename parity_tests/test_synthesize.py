"""End to end: phonemes/text -> codes -> WAV on torch, ONNX and llama.cpp, and the synthesize command."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from valle_export import wav
from valle_export.cli import main

from .conftest import DEMO_VARIANTS
from .test_bad_inputs import assert_one_line_error

PHONEMES = "həlˈoʊ wˈɜːld, ðɪs ɪz ɐ tˈɛst."


@pytest.fixture(scope="module")
def exported(tmp_path_factory, demo_checkpoint):
    """A SiLU segmented demo model (exact on every backend) exported to ONNX + EnCodec + Vocos + GGUF (Vocos
    written into the model's export folder, where synthesize finds it and decodes with it by default)."""
    ckpt = demo_checkpoint(*DEMO_VARIANTS[2])
    out = tmp_path_factory.mktemp("synth")
    runner = CliRunner()
    for args in (["onnx", ckpt, out / "model"], ["encodec", out / "model"], ["vocos", "-o", out / "model"],
                 ["gguf", ckpt, "-o", out / "model" / "model.f32.gguf", "--outtype", "f32"]):
        r = runner.invoke(main, [str(a) for a in args] + ["-q"])
        assert r.exit_code == 0, r.output
    return ckpt, out / "model"


def run(model, out, *extra, backend="auto", codec=None):
    args = ["synthesize", str(model), "--out", str(out), "--json", "-q", "--backend", backend, *extra]
    if codec:
        args += ["--codec", str(codec)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return json.loads(r.output.strip().splitlines()[-1])


@pytest.mark.parametrize("modality", ["ar+nar", "nar-len"])
def test_greedy_synthesis_identical_on_every_backend(exported, tmp_path, modality):
    ckpt, model = exported
    greedy = ["--phonemes", PHONEMES, "--ar-temperature", "0", "--max-duration", "2", "--modality", modality,
              "--demask-steps", "6"]
    summaries = {
        "torch": run(ckpt, tmp_path / "torch.wav", *greedy, backend="torch", codec=model),
        "onnx": run(model, tmp_path / "onnx.wav", *greedy),
        "llamacpp": run(model / "model.f32.gguf", tmp_path / "llamacpp.wav", *greedy),
    }
    audio = {k: wav.read_wav(tmp_path / f"{k}.wav")[0][:, 0] for k in summaries}
    frames = {k: s["frames"] for k, s in summaries.items()}
    assert len(set(frames.values())) == 1 and frames["onnx"] > 0, frames
    assert summaries["llamacpp"]["exact"], summaries["llamacpp"]
    for k in ("onnx", "llamacpp"):
        err = np.abs(audio[k] - audio["torch"]).max()
        assert err == 0.0, f"{k} vs torch: waveform max abs {err:.3e} (codes differ?)"


def test_seeded_sampling_is_reproducible(exported, tmp_path):
    _, model = exported
    args = ["--phonemes", PHONEMES, "--max-duration", "1.5", "--top-k", "40"]
    run(model, tmp_path / "a.wav", *args, "--seed", "3")
    run(model, tmp_path / "b.wav", *args, "--seed", "3")
    run(model, tmp_path / "c.wav", *args, "--seed", "4")
    a, b, c = ((tmp_path / f"{n}.wav").read_bytes() for n in "abc")
    assert a == b and a != c


def test_prompt_wav_and_summary(exported, tmp_path):
    _, model = exported
    t = np.arange(int(0.8 * 16000)) / 16000
    wav.write_wav(tmp_path / "prompt.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    s = run(model, tmp_path / "p.wav", "--phonemes", PHONEMES, "--prompt", str(tmp_path / "prompt.wav"),
            "--max-duration", "1", "--seed", "0")
    assert s["timings_s"]["prompt_s"] > 0 and s["audio_s"] == pytest.approx(s["frames"] / 75)
    # --modality auto (the default) runs NAR-len on a model with the len capability, as the original
    assert s["modality"] == "nar-len", s["modality"]
    assert set(s["timings_s"]) == {"text_s", "prompt_s", "len_s", "demask_s", "nar_s", "decode_s"}
    samples, rate = wav.read_wav(tmp_path / "p.wav")
    assert rate == 24000 and len(samples) == s["frames"] * 320


def test_decoder_choice(exported, tmp_path):
    """Vocos by default when its graph is beside the model (as the original), EnCodec on request: the same
    codes, the same length, different audio; the summary names the decoder."""
    from runtimes.synthesize import find_codec

    _, model = exported
    args = ["--phonemes", PHONEMES, "--max-duration", "1", "--seed", "2", "--float-wav"]
    default = run(model, tmp_path / "default.wav", *args)
    voc = run(model, tmp_path / "vocos.wav", *args, "--decoder", "vocos")
    enc = run(model, tmp_path / "encodec.wav", *args, "--decoder", "encodec")
    assert (default["decoder"], voc["decoder"], enc["decoder"]) == ("vocos", "vocos", "encodec")
    audio = {k: wav.read_wav(tmp_path / f"{k}.wav")[0][:, 0] for k in ("default", "vocos", "encodec")}
    assert np.array_equal(audio["default"], audio["vocos"])
    assert len(audio["vocos"]) == len(audio["encodec"]) == 320 * voc["frames"] == 320 * enc["frames"]
    assert np.abs(audio["vocos"] - audio["encodec"]).max() > 0.01
    codec = find_codec(model, None)
    assert codec.decoder.name == "vocos" and codec.decoder.min_frames == 1
    assert codec.decode(np.zeros((8, 1), np.int64)).shape == (320,)  # no 7-frame minimum with Vocos
    (tmp_path / "encodec_only").mkdir()
    (tmp_path / "encodec_only" / "encodec_encoder.onnx").write_bytes(b"stand-in")
    assert find_codec(model, None, "encodec").decoder.name == "encodec"
    r = CliRunner().invoke(main, ["synthesize", str(model), "--phonemes", "a", "--codec",
                                  str(tmp_path / "encodec_only"), "--decoder", "vocos",
                                  "--out", str(tmp_path / "o.wav")])
    assert_one_line_error(r, "no vocos_decoder.onnx", "valle-export vocos -o")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is installed by scripts/system_deps.sh")
def test_text_through_espeak(exported, tmp_path):
    from runtimes.text import PhonemeTokenizer, phonemize
    from valle_export.demo_tokenizer import demo_tokenizer_json

    assert phonemize("Once again, excellent work.") == "wˈʌns ɐɡˈɛn, ˈɛksələnt wˈɜːk."  # the fixture's phonemes
    ids = PhonemeTokenizer(demo_tokenizer_json()).encode(phonemize("Hello world."))
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) > 5
    _, model = exported
    s = run(model, tmp_path / "t.wav", "--text", "Hello world.", "--max-duration", "1", "--seed", "0")
    assert s["phonemes"] == len(ids)


def test_synthesis_never_imports_torch(exported, tmp_path):
    _, model = exported
    code = ("import sys; from valle_export.cli import main\n"
            "try:\n main(['synthesize', sys.argv[1], '--phonemes', 'həlˈoʊ', '--out', sys.argv[2], '-q',"
            " '--max-duration', '1', '--seed', '0'])\nexcept SystemExit as e:\n assert not e.code, e.code\n"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\nassert not bad, bad\n")
    for target in (model, model / "model.f32.gguf"):
        r = subprocess.run([sys.executable, "-c", code, str(target), str(tmp_path / "x.wav")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-800:]


def test_bad_synthesis_input(exported, tmp_path, onnx_export):
    _, model = exported
    runner = CliRunner()

    def syn(*args):
        return runner.invoke(main, ["synthesize", *map(str, args), "--out", str(tmp_path / "o.wav")])

    assert_one_line_error(syn(model, "--phonemes", "a", "--phoneme-ids", "1,2"), "exactly one of")
    assert_one_line_error(syn(model, "--text", "a", "--text-language", "xx"), "does not know text language 'xx'")
    assert_one_line_error(syn(model, "--phoneme-ids", "1,999"), "--phoneme-ids must be 0..255")
    assert_one_line_error(syn(tmp_path, "--phonemes", "a"), "not an exported model")
    assert_one_line_error(syn(onnx_export(), "--phonemes", "a"), "no EnCodec graphs")
    (tmp_path / "bad.wav").write_text("nope")
    assert_one_line_error(syn(model, "--phonemes", "a", "--prompt", tmp_path / "bad.wav"), "not an audio file")
    assert not (tmp_path / "o.wav").exists()
