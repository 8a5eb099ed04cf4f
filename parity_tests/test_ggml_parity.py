"""The ggml backend (our own exact graph on ggml, from the same GGUF) vs the reference and the fixtures.

f32 GGUF: every pass within 1e-4 relative (measured 3e-7 .. 5e-7), greedy AR / NAR / len / NAR-len
identical, for both activations, both position modes and both mask policies, including the released
configuration (GELU + segmented positions + non-causal NAR masks) that stock llama.cpp cannot run.
Quantized files: measured argmax agreement against stated floors.
"""
import re
import numpy as np
import pytest
from click.testing import CliRunner

from valle_export.cli import main

from .compare import assert_logits_close
from .conftest import DEMO_VARIANTS, fixture_dirs, random_conditioning
from .backend_checks import all_passes, argmax_agreement_of, assert_cached_steps_close, assert_greedy_flows_identical
from .isolated import isolated_logits
from .tolerances import LOGITS_REL_FP32

pytest.importorskip("ggml")

QUANT_AGREEMENT = {"f16": 0.95, "q8_0": 0.9, "q4_k_m": 0.5}


def pair(gguf_export, demo_checkpoint, variant, outtype="f32"):
    from reference_model.backend import TorchBackend
    from reference_model.load import load_reference
    from runtimes.ggml_backend import GgmlBackend

    return GgmlBackend(gguf_export(variant, outtype)), TorchBackend(load_reference(demo_checkpoint(*variant)))


@pytest.mark.parametrize("variant", DEMO_VARIANTS, ids=lambda v: "-".join(v))
def test_every_pass_exact_from_f32_gguf(variant, gguf_export, demo_checkpoint):
    b, ref = pair(gguf_export, demo_checkpoint, variant)
    assert b.exact
    cond = random_conditioning(41, phonemes=19, prompt_frames=29)
    resp = np.random.default_rng(42).integers(0, 1024, (23, 8))
    for name, spec in all_passes(ref.layout, cond, resp):
        assert_logits_close(b.logits(spec), ref.logits(spec), LOGITS_REL_FP32, f"ggml {'-'.join(variant)} {name}")


@pytest.mark.parametrize("variant", DEMO_VARIANTS, ids=lambda v: "-".join(v))
def test_greedy_tokens_identical(variant, gguf_export, demo_checkpoint):
    b, ref = pair(gguf_export, demo_checkpoint, variant)
    assert_greedy_flows_identical(b, ref, random_conditioning(43), demask_frames=14)


def test_cached_steps_exact(gguf_export, demo_checkpoint):
    """90 steps: the reused step graph crosses two attention spans (runtimes.ggml_backend.STEP_SPAN)."""
    from runtimes.ggml_backend import STEP_SPAN

    b, ref = pair(gguf_export, demo_checkpoint, DEMO_VARIANTS[0])
    assert_cached_steps_close(b, ref, random_conditioning(44), 45, 90, LOGITS_REL_FP32,
                              "ggml cached AR steps, GELU segmented")
    assert b._step_graph is not None and b._step_graph.span >= 2 * STEP_SPAN, "steps did not cross a span"


@pytest.mark.parametrize("outtype", list(QUANT_AGREEMENT))
def test_quantized_files_measured_agreement(outtype, gguf_export, demo_checkpoint, tmp_path):
    """Runs ggml in a child process: a native crash fails this test only, naming the outtype and signal."""
    from reference_model.backend import TorchBackend
    from reference_model.load import load_reference

    ref = TorchBackend(load_reference(demo_checkpoint(*DEMO_VARIANTS[0])))
    cond = random_conditioning(46)
    specs = [spec for _, spec in all_passes(ref.layout, cond, np.random.default_rng(47).integers(0, 1024, (20, 8)))]
    got, label = isolated_logits("ggml", gguf_export(DEMO_VARIANTS[0], outtype), specs, tmp_path)
    assert not label["exact"] and "weights stored as" in label["approximation"], f"{outtype}: labelled {label}"
    agree, total = argmax_agreement_of(got, [ref.logits(s) for s in specs])
    assert agree / total >= QUANT_AGREEMENT[outtype], f"{outtype}: argmax agreement {agree}/{total}"


@pytest.mark.parametrize("fixture", fixture_dirs(), ids=lambda p: p.name)
def test_check_fixture_ggml_all_exact(fixture):
    r = CliRunner().invoke(main, ["check-fixture", str(fixture), "--backend", "ggml"])
    summary = re.search(r"ggml: (\d+)/(\d+) cases meet the backend's contract \((\d+) exact(, \d+ skipped)?\)",
                        r.output)
    assert r.exit_code == 0 and summary and summary[1] == summary[2], r.output
    assert int(summary[3]) >= 20 and "approximate" not in r.output and "refused" not in r.output, r.output


def test_synthesis_on_ggml_matches_onnx_and_torch(tmp_path, demo_checkpoint):
    """The released configuration (GELU, segmented): greedy synthesis identical on ggml, ONNX and torch."""
    from valle_export import wav

    ckpt = demo_checkpoint(*DEMO_VARIANTS[0])
    model = tmp_path / "model"
    for args in (["onnx", ckpt, model], ["encodec", model], ["gguf", ckpt, "-o", model / "m.gguf", "--outtype", "f32"]):
        assert CliRunner().invoke(main, [str(a) for a in args] + ["-q"]).exit_code == 0
    greedy = ["--phonemes", "həlˈoʊ wˈɜːld", "--ar-temperature", "0", "--max-duration", "1.5", "-q"]
    outs = {}
    for name, target, backend in (("ggml", model / "m.gguf", "ggml"), ("onnx", model, "onnx"),
                                  ("torch", ckpt, "torch")):
        out = tmp_path / f"{name}.wav"
        r = CliRunner().invoke(main, ["synthesize", str(target), "--backend", backend, "--codec", str(model),
                                      "--out", str(out), *greedy])
        assert r.exit_code == 0, r.output
        outs[name] = wav.read_wav(out)[0][:, 0]
    assert len(outs["ggml"]) > 0
    for other in ("onnx", "torch"):
        assert np.array_equal(outs["ggml"], outs[other]), f"ggml vs {other}: codes differ"

