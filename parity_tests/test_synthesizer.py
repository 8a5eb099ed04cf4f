"""Synthesis like the original (issue 18): the Python API, long text, context history, voices, variants,
demo warnings, output formats, guidance on AR / NAR levels and NAR-len sampling, on a real exported model."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from runtimes.synthesize import SynthesisSettings, resolve_modality
from runtimes.synthesizer import Synthesizer
from valle_export import wav
from valle_export.cli import main
from valle_export.errors import BadInput

from .test_bad_inputs import assert_one_line_error
from .test_synthesize import exported, run  # noqa: F401  (the module-scoped exported demo model)

SENTENCES = ["həlˈoʊ wˈɜːld.", "ðɪs ɪz ɐ tˈɛst.", "ɡʊdbˈaɪ nˈaʊ!"]
GREEDY = dict(ar=SynthesisSettings().ar.__class__(temperature=0.0), seed=0, max_duration=1.5, demask_steps=6)


@pytest.fixture(scope="module")
def tts(exported):  # noqa: F811
    return Synthesizer.open(exported[1])


def _sine(seconds: float, rate: int = 16000, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize("modality", ["ar+nar", "nar-len"])
def test_paragraph_is_the_sum_of_its_sentences(exported, tts, tmp_path, modality):  # noqa: F811
    """Three sentences in one call (CLI, default split by sentences): one file, as long as the three spoken
    one by one (greedy, seeded), and the same samples."""
    _, model = exported
    s = run(model, tmp_path / "p.wav", "--phonemes", " ".join(SENTENCES), "--ar-temperature", "0", "--seed", "0",
            "--max-duration", "1.5", "--demask-steps", "6", "--modality", modality)
    alone = [tts.speak_detailed(_ipa(p), None, **GREEDY, modality=modality) for p in SENTENCES]
    want = [int(a.summary["frames"]) for a in alone]
    assert s["pieces"] == 3 and s["piece_frames"] == want, f"{s['piece_frames']} != sentences alone {want}"
    audio, rate = wav.read_wav(tmp_path / "p.wav")
    assert len(audio) == sum(want) * 320, f"{len(audio)} samples, sentences alone {sum(want) * 320}"
    err = np.abs(audio[:, 0] - np.concatenate([a.audio for a in alone])).max()
    assert err == 0.0, f"paragraph vs sentences alone: max abs {err:.3e}"


def _ipa(phonemes: str):
    from runtimes.synthesize import TextInput

    return TextInput(phonemes=phonemes)


@pytest.mark.parametrize("modality", ["ar+nar", "nar-len"])
def test_context_history_prefixes_level_0_and_is_sliced_off(tts, modality):
    text = _ipa(" ".join(SENTENCES))
    plain = tts.speak_detailed(text, None, **GREEDY, modality=modality)
    ctx = tts.speak_detailed(text, None, **GREEDY, modality=modality, context_history=1)
    assert np.array_equal(ctx.codes[0], plain.codes[0]), "the first piece has no history"
    changed = [i for i in (1, 2) if not np.array_equal(ctx.codes[i], plain.codes[i])]
    assert changed, "context history changed none of the later pieces"
    assert len(ctx.audio) == sum(len(c) for c in ctx.codes) * 320, "prefix frames leaked into the audio"
    assert all(len(c) <= 1.5 * 75 for c in ctx.codes), [len(c) for c in ctx.codes]


def test_split_modes(tts):
    from runtimes.text_split import split_text

    assert split_text('One. "Two?" Three!\nFour', "sentences") == ["One.", '"Two?"', "Three!", "Four"]
    assert split_text("a\n\nb", "lines") == ["a", "b"] and split_text("a. b.", "none") == ["a. b."]
    assert split_text("a|b||c", "|") == ["a", "b", "c"]
    speech = tts.speak_detailed(_ipa("|".join(SENTENCES[:2])), None, **GREEDY, split_text_by="|")
    assert speech.summary["pieces"] == 2, speech.summary


def test_modality_auto_as_the_original():
    assert resolve_modality("auto", ("ar", "nar", "len")) == "nar-len"
    assert resolve_modality("auto", ("ar", "nar")) == "ar+nar"
    assert resolve_modality("auto", ("ar", "nar", "len"), "ar+nar") == "ar+nar"  # a model named by modality
    with pytest.raises(BadInput, match="no `len` capability"):
        resolve_modality("nar-len", ("ar", "nar"))


def test_voices_concatenate_trim_and_reuse(exported, tts, tmp_path):  # noqa: F811
    import soundfile

    from runtimes.voice import encode_voice

    _, model = exported
    wav.write_wav(tmp_path / "a.wav", _sine(0.8), 16000)
    soundfile.write(tmp_path / "b.flac", _sine(0.6, 22050, 330), 22050)
    soundfile.write(tmp_path / "c.ogg", _sine(0.5, 24000, 440), 24000)
    each = [tts.voice([tmp_path / n], 0).codes for n in ("a.wav", "b.flac", "c.ogg")]
    assert [len(c) for c in each] == [60, 45, 38], [len(c) for c in each]  # ceil(seconds * 24000 / 320)
    whole = encode_voice(tts.codec, [tmp_path / "a.wav", tmp_path / "b.flac"], 0)
    assert np.array_equal(whole.codes, np.concatenate(each[:2])), "codes of several clips are concatenated"
    three = encode_voice(tts.codec, [tmp_path / "a.wav", tmp_path / "b.flac"], 3.0)
    assert len(three.codes) == 225 and np.array_equal(three.codes[:105], whole.codes) \
        and np.array_equal(three.codes[105:210], whole.codes), "repeated to 3 s as the original"
    runner = CliRunner()
    r = runner.invoke(main, ["voice", str(tmp_path / "a.wav"), str(tmp_path / "b.flac"), "-o",
                             str(tmp_path / "v.npz"), "--codec", str(model), "-q"])
    assert r.exit_code == 0, r.output
    args = ["--phonemes", SENTENCES[0], "--seed", "1", "--max-duration", "1", "--demask-steps", "4"]
    s1 = run(model, tmp_path / "voice.wav", *args, "--voice", str(tmp_path / "v.npz"))
    s2 = run(model, tmp_path / "prompts.wav", *args, "--prompt", str(tmp_path / "a.wav"), "--prompt",
             str(tmp_path / "b.flac"))
    assert s1["timings_s"]["prompt_s"] < s2["timings_s"]["prompt_s"], "the voice file skips the encoder"
    assert (tmp_path / "voice.wav").read_bytes() == (tmp_path / "prompts.wav").read_bytes()


def test_voice_from_another_codec_is_refused(exported, tts, tmp_path):  # noqa: F811
    import dataclasses

    from runtimes.voice import save_voice

    _, model = exported
    wav.write_wav(tmp_path / "a.wav", _sine(0.5), 16000)
    other = dataclasses.replace(tts.voice([tmp_path / "a.wav"]), codec_fingerprint="0" * 64)
    save_voice(other, tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for voice, needle in (("other.npz", "another codec"), ("junk.npz", "not a voice file")):
        r = CliRunner().invoke(main, ["synthesize", str(model), "--phonemes", "a", "--voice", str(tmp_path / voice),
                                      "--out", str(tmp_path / "o.wav"), "-q"])
        assert_one_line_error(r, needle)
    assert not (tmp_path / "o.wav").exists()


def test_output_formats_and_float_wav(exported, tmp_path):  # noqa: F811
    import soundfile

    _, model = exported
    args = ["--phonemes", SENTENCES[0], "--seed", "0", "--max-duration", "1", "--demask-steps", "4"]
    frames = run(model, tmp_path / "a.wav", *args)["frames"]
    assert wav.read_header(tmp_path / "a.wav").encoding == wav.IEEE_FLOAT, "float32 WAV by default (the original)"
    run(model, tmp_path / "b.wav", *args, "--pcm16-wav")
    assert wav.read_header(tmp_path / "b.wav").bits == 16
    run(model, tmp_path / "c.flac", *args)
    run(model, tmp_path / "d.out", *args, "--format", "ogg")
    flac, rate = soundfile.read(tmp_path / "c.flac")
    assert rate == 24000 and len(flac) == frames * 320, f"FLAC {len(flac)} samples, want {frames * 320}"
    assert soundfile.info(str(tmp_path / "d.out")).format == "OGG"
    ref = wav.read_wav(tmp_path / "a.wav")[0][:, 0]
    assert np.abs(flac - np.clip(ref, -1, 1)).max() < 2e-6 * 8, "FLAC is 24-bit: within 1 LSB"


def test_demo_weights_warn_and_variants(exported, tmp_path):  # noqa: F811
    _, model = exported
    r = subprocess.run([sys.executable, "-m", "valle_export.cli", "synthesize", str(model), "--phonemes", "a",
                        "--out", str(tmp_path / "o.wav"), "-q", "--max-duration", "0.5", "--seed", "0"],
                       capture_output=True, text=True)
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert r.returncode == 0 and len(warnings) == 2, r.stderr
    assert "the model" in warnings[0] and "the codec" in warnings[1], warnings
    only16 = tmp_path / "fp16only"
    shutil.copytree(model, only16)
    (only16 / "backbone.onnx").rename(only16 / "backbone.fp16.onnx")
    s = run(only16, tmp_path / "v.wav", "--phonemes", "a", "--max-duration", "0.5", "--seed", "0")
    assert s["frames"] > 0
    r = CliRunner().invoke(main, ["synthesize", str(only16), "--phonemes", "a", "--variant", "fp32",
                                  "--out", str(tmp_path / "x.wav")])
    assert_one_line_error(r, "exported graphs here: backbone.fp16.onnx")
    r = CliRunner().invoke(main, ["synthesize", str(model / "model.f32.gguf"), "--phonemes", "a", "--variant",
                                  "int8", "--out", str(tmp_path / "x.wav")])
    assert_one_line_error(r, "--variant selects an ONNX graph")


def test_guidance_on_ar_uses_a_second_cache(tts):
    from runtimes.pipeline import Conditioning, Guidance, generate_ar, generate_nar

    backend = tts.backend
    cond = Conditioning(tts.pieces(_ipa(SENTENCES[1]), "none")[0][0], 0, None)
    g = Guidance(3.0, 0.75)
    cached = generate_ar(backend, cond, 40, guidance=g)
    recomputed = generate_ar(backend, cond, 40, use_cache=False, guidance=g)
    plain = generate_ar(backend, cond, 40)
    assert np.array_equal(cached, recomputed), f"guided AR cached {cached[:10]} vs recomputed {recomputed[:10]}"
    assert not np.array_equal(cached, plain), "guidance changed nothing"
    codes0 = plain[:20] if len(plain) >= 20 else np.resize(plain, 20)
    assert not np.array_equal(generate_nar(backend, cond, codes0, guidance=g), generate_nar(backend, cond, codes0))


def test_nar_len_sampling_is_annealed_and_seeded(tts):
    from runtimes.pipeline import Conditioning, DemaskSettings, demask_nar_len
    from runtimes.samplers import SamplerSettings

    cond = Conditioning(tts.pieces(_ipa(SENTENCES[0]), "none")[0][0], 0, None)
    hot = DemaskSettings(steps=5, sampler=SamplerSettings(temperature=1.5, top_k=50))

    def codes(settings, seed):
        return demask_nar_len(tts.backend, cond, 30, settings, np.random.default_rng(seed))[0]

    a, b, c = codes(hot, 1), codes(hot, 1), codes(hot, 2)
    greedy = codes(DemaskSettings(steps=5), 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c), "seeded NAR-len sampling"
    assert not np.array_equal(a, greedy), "temperature 1.5 gave the greedy codes"


def test_text_front_end(exported, tts, tmp_path):  # noqa: F811
    from runtimes import text

    _, model = exported
    assert text.language_id("es") == 0 and text.language_id("auto") == 0 and text.language_id("fr-fr") == 3
    assert text.detect_language("Ceci est une phrase en français, sans aucun doute.") == "fr"
    bare = tmp_path / "bare"
    shutil.copytree(model, bare, ignore=shutil.ignore_patterns("tokenizer.json", "*.gguf"))
    r = CliRunner().invoke(main, ["synthesize", str(bare), "--phonemes", "a", "--out", str(tmp_path / "o.wav")])
    assert_one_line_error(r, "--tokenizer FILE")
    s = run(bare, tmp_path / "t.wav", "--phonemes", SENTENCES[0], "--tokenizer", str(model / "tokenizer.json"),
            "--max-duration", "0.5", "--seed", "0")
    assert s["phonemes"] == len(tts.tokenizer.encode(SENTENCES[0]))
    if shutil.which("espeak-ng"):
        assert text.to_hiragana("日本語") == "にほんご"
        assert text.phonemize("日本語", "ja") == text.phonemize("にほんご", "ja")  # kanji -> hiragana first
        s = run(model, tmp_path / "es.wav", "--text", "Hola amigo.", "--lang", "es", "--max-duration", "0.5",
                "--seed", "0")
        assert s["frames"] > 0
    code = ("import sys; sys.modules['pykakasi'] = None\nfrom runtimes.text import to_hiragana\n"
            "try:\n to_hiragana('日本')\nexcept Exception as e:\n print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    assert out.startswith("Japanese text needs the pykakasi package") and "\n" not in out, out


@pytest.mark.parametrize("modality", ["ar+nar", "nar-len"])
def test_sentences_run_together_with_the_seeded_audio_of_apart_and_of_the_server(tts, modality):
    """Independent sentences of one text get their level 0 together (AR steps in one batch, or each NAR-len
    demasking step in one call) and run each NAR level in one call (ONNX): sampled and seeded, the codes and
    audio equal those of the sentences run one after the other, and the server engine's for the same seed
    (one seeding rule: sentence i draws from default_rng([seed, i]))."""
    from runtimes.engine import Audio, Engine
    from runtimes.samplers import SamplerSettings
    from runtimes.synthesize import SynthesisSettings

    settings = SynthesisSettings(modality=modality, ar=SamplerSettings(temperature=1.0, top_k=40),
                                 nar=SamplerSettings(temperature=0.7), seed=7, max_duration=1.5, demask_steps=5)
    text = _ipa(" ".join(SENTENCES))
    backend = tts.backend
    assert hasattr(backend, "batch_hidden"), "the demo export is ONNX (batched passes)"
    calls, nar_calls = [], []
    batch_hidden, batch_logits = backend.batch_hidden, backend.batch_logits
    backend.batch_hidden = lambda *a, **k: calls.append(1) or batch_hidden(*a, **k)
    backend.batch_logits = lambda specs: nar_calls.append(len(specs)) or batch_logits(specs)
    try:
        together = tts.speak_detailed(text, None, settings)
        stepped_together, nar_together = len(calls), list(nar_calls)
        tts.batch_sentences = False
        apart = tts.speak_detailed(text, None, settings)
    finally:
        tts.batch_sentences = True
        del backend.batch_hidden, backend.batch_logits
    levels = backend.layout.audio_levels - 1
    if modality == "ar+nar":
        assert stepped_together > 1 and len(calls) == stepped_together, \
            f"{stepped_together} batched calls together, {len(calls) - stepped_together} apart"
        assert nar_together == [3] * levels and len(nar_calls) == levels, f"NAR calls (passes each): {nar_calls}"
    else:  # 3 sentences x (conditional, guidance-free) per demasking step; apart: one pair per call
        steps = settings.demask_steps
        assert nar_together == [6] * steps + [3] * levels, f"calls together (passes each): {nar_together}"
        assert nar_calls[len(nar_together):] == [2] * (3 * steps), f"calls apart: {nar_calls[len(nar_together):]}"
    for i, (a, b) in enumerate(zip(together.codes, apart.codes)):
        assert np.array_equal(a, b), f"sentence {i}: together {a[:4, 0]}.. apart {b[:4, 0]}.."
    assert np.array_equal(together.audio, apart.audio)
    engine = Engine(tts)
    try:
        served = [e.codes for e in engine.stream(tts.pieces(text, "sentences"), None, settings) if isinstance(e, Audio)]
    finally:
        engine.close()
    assert len(served) == 3 and all(np.array_equal(a, b) for a, b in zip(served, together.codes)), \
        "the server's audio for the same seed differs from synthesize's"
