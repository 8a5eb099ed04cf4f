"""onnxruntime backend vs the torch reference and the original's fixtures (CPU provider).

fp32: every pass within 1e-4 relative, greedy AR / NAR / len / NAR-len tokens identical.
fp16 / int8: they load and run; error and token agreement are measured and bounded (stated below).
"""
import numpy as np
import pytest

from valle_export import sequence as seq

from .compare import assert_logits_close, assert_tokens_equal, rel_error
from .conftest import DEMO_VARIANTS, fixture_dirs, random_conditioning
from .tolerances import LOGITS_REL_FP32

# Measured on the tiny demo models (2 layers, random weights): fp16 ~2e-3, int8 ~3e-2 relative logits error.
LOGITS_REL_FP16 = 2e-2
LOGITS_REL_INT8 = 2e-1
TOKEN_AGREEMENT_FP16 = 0.95
TOKEN_AGREEMENT_INT8 = 0.5


def backends(onnx_folder, checkpoint, variant="fp32"):
    from reference_model.backend import TorchBackend
    from reference_model.load import load_reference
    from runtimes.onnx_backend import OnnxBackend, SessionConfig

    return OnnxBackend(onnx_folder, SessionConfig(provider="cpu", variant=variant)), TorchBackend(load_reference(checkpoint))


def all_passes(layout, cond, resp):
    yield "ar", seq.ar_pass(layout, cond.phn, cond.lang, cond.prompt, resp[:, 0])
    for q in range(1, layout.audio_levels):
        yield f"nar.{q}", seq.nar_pass(layout, cond.phn, cond.lang, cond.prompt, resp, q)
    yield "len", seq.len_pass(layout, cond.phn, cond.lang, cond.prompt, [0, 4, 2])
    masked = np.where(np.arange(len(resp)) % 3 == 0, layout.mask_token, resp[:, 0])
    yield "narlen", seq.nar_len_pass(layout, cond.phn, cond.lang, cond.prompt, masked)
    yield "narlen_null", seq.nar_len_pass(layout, seq.null_phonemes(layout), cond.lang, None, masked)


@pytest.mark.parametrize("variant", DEMO_VARIANTS, ids=lambda v: "-".join(v))
def test_every_pass_fp32(variant, onnx_export, demo_checkpoint):
    onnx_b, ref = backends(onnx_export(variant), demo_checkpoint(*variant))
    cond = random_conditioning(11, phonemes=21, prompt_frames=37)
    resp = np.random.default_rng(12).integers(0, 1024, (29, 8))
    worst = 0.0
    for name, spec in all_passes(ref.layout, cond, resp):
        worst = max(worst, assert_logits_close(onnx_b.logits(spec), ref.logits(spec), LOGITS_REL_FP32, name))
    assert worst > 0.0, "ONNX and torch bit-identical: suspicious (same backend?)"


@pytest.mark.parametrize("variant", DEMO_VARIANTS, ids=lambda v: "-".join(v))
def test_greedy_tokens_identical(variant, onnx_export, demo_checkpoint):
    from runtimes.pipeline import DemaskSettings, demask_nar_len, generate_ar, generate_len, generate_nar

    onnx_b, ref = backends(onnx_export(variant), demo_checkpoint(*variant))
    cond = random_conditioning(13)
    ar_onnx, ar_ref = generate_ar(onnx_b, cond, 40), generate_ar(ref, cond, 40)
    assert_tokens_equal(ar_onnx, ar_ref, "greedy AR")
    assert_tokens_equal(generate_nar(onnx_b, cond, ar_ref), generate_nar(ref, cond, ar_ref), "greedy NAR")
    assert generate_len(onnx_b, cond).value == generate_len(ref, cond).value
    s = DemaskSettings(steps=6)
    assert_tokens_equal(demask_nar_len(onnx_b, cond, 17, s)[0], demask_nar_len(ref, cond, 17, s)[0], "NAR-len")


def test_cached_steps_match_reference(onnx_export, demo_checkpoint):
    onnx_b, ref = backends(onnx_export(), demo_checkpoint())
    cond = random_conditioning(14)
    spec = seq.ar_pass(ref.layout, cond.phn, cond.lang, cond.prompt, [])
    got, want = [onnx_b.prefill(spec)], [ref.prefill(spec)]
    for code in np.random.default_rng(15).integers(0, 1024, 10):
        spec = seq.extend(ref.layout, spec, "AR:0:0", [int(code)])
        got.append(onnx_b.extend(spec))
        want.append(ref.extend(spec))
    assert_logits_close(np.stack(got), np.stack(want), LOGITS_REL_FP32, "cached AR steps")


@pytest.mark.parametrize("fixture", fixture_dirs(), ids=lambda p: p.name)
def test_fixture_on_onnx(fixture, onnx_export):
    from runtimes.fixture_check import check_greedy_runs, check_pass_cases, load_fixture
    from runtimes.onnx_backend import OnnxBackend, SessionConfig

    backend = OnnxBackend(onnx_export(checkpoint=fixture), SessionConfig(provider="cpu"))
    fx = load_fixture(fixture)
    results = check_pass_cases(fx, backend) + check_greedy_runs(fx, backend)
    bad = [r.line() for r in results if not r.ok]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("dtype, quantize, rel_bound, agreement", [
    ("fp16", None, LOGITS_REL_FP16, TOKEN_AGREEMENT_FP16),
    ("fp32", "int8", LOGITS_REL_INT8, TOKEN_AGREEMENT_INT8),
])
def test_reduced_precision_within_stated_bounds(dtype, quantize, rel_bound, agreement, onnx_export, demo_checkpoint):
    variant = "int8" if quantize else dtype
    onnx_b, ref = backends(onnx_export(dtype=dtype, quantize=quantize), demo_checkpoint(), variant)
    cond = random_conditioning(16)
    resp = np.random.default_rng(17).integers(0, 1024, (25, 8))
    agree, total, worst = 0, 0, 0.0
    for name, spec in all_passes(ref.layout, cond, resp):
        got, want = onnx_b.logits(spec), ref.logits(spec)
        worst = max(worst, rel_error(got, want)[1])
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        total += len(got)
    assert worst <= rel_bound, f"{variant}: logits relative error {worst:.3e} > {rel_bound}"
    assert agree / total >= agreement, f"{variant}: argmax agreement {agree}/{total} < {agreement:.0%}"


@pytest.mark.gpu
def test_cuda_provider_with_iobinding(onnx_export, demo_checkpoint):
    from reference_model.backend import TorchBackend
    from reference_model.load import load_reference
    from runtimes.onnx_backend import OnnxBackend, SessionConfig
    from runtimes.pipeline import generate_ar

    gpu = OnnxBackend(onnx_export(), SessionConfig(provider="cuda"))
    assert gpu.on_cuda
    ref = TorchBackend(load_reference(demo_checkpoint()))
    cond = random_conditioning(18)
    assert_tokens_equal(generate_ar(gpu, cond, 30), generate_ar(ref, cond, 30), "greedy AR on CUDA")
