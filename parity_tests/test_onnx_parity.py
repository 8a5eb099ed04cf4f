"""onnxruntime backend vs the torch reference and the original's fixtures (CPU provider).

fp32: every pass within 1e-4 relative, greedy AR / NAR / len / NAR-len tokens identical.
fp16 / int8: they load and run; error and token agreement are measured and bounded (stated below).
"""
import numpy as np
import pytest


from .backend_checks import all_passes, argmax_agreement, assert_cached_steps_close, assert_greedy_flows_identical
from .compare import assert_logits_close, assert_tokens_equal, rel_error
from .conftest import DEMO_VARIANTS, fixture_dirs, fixture_lora, random_conditioning
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

    onnx = OnnxBackend(onnx_folder, SessionConfig(provider="cpu", variant=variant))
    return onnx, TorchBackend(load_reference(checkpoint))


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
    onnx_b, ref = backends(onnx_export(variant), demo_checkpoint(*variant))
    assert_greedy_flows_identical(onnx_b, ref, random_conditioning(13), demask_frames=17, demask_steps=6)


def test_cached_steps_match_reference(onnx_export, demo_checkpoint):
    onnx_b, ref = backends(onnx_export(), demo_checkpoint())
    assert_cached_steps_close(onnx_b, ref, random_conditioning(14), 15, 10, LOGITS_REL_FP32, "cached AR steps")


@pytest.mark.parametrize("fixture", fixture_dirs(), ids=lambda p: p.name)
def test_fixture_on_onnx(fixture, onnx_export):
    from runtimes.fixture_check import check_fixture
    from runtimes.onnx_backend import OnnxBackend, SessionConfig

    def backend_for(adapter: bool):
        return OnnxBackend(onnx_export(checkpoint=fixture, lora=fixture_lora(fixture, adapter)),
                           SessionConfig(provider="cpu"))

    results = check_fixture(fixture, backend_for)
    assert len(results) >= 20
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
    worst = max(rel_error(onnx_b.logits(spec), ref.logits(spec))[1] for _, spec in all_passes(ref.layout, cond, resp))
    agree, total = argmax_agreement(onnx_b, ref, cond, resp)
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
