"""Issue 22's fast configurations, for correctness (their speed is measured by benchmarks/bench_e2e.py only):
- the quantized ONNX variants q8_0 / q4_0 / q4_128 (MatMulNBits) and w8a8 (integer GEMMs): exported and
  verified (backbone and AR step graph), labelled approximate, greedy tokens close to fp32's (teacher-forced
  agreement through the step graph, contracts.TEACHER_FORCED_AGREEMENT) and batch-invariant;
- a hybrid model folder (ONNX export + ar.<type>.gguf): `--backend auto` runs AR on ggml and NAR on
  onnxruntime, identical to ONNX alone with exact files;
- guided full passes (NAR-len's conditional and guidance-free pass, guided NAR levels) in one batched call
  on every backend (ONNX's batch axis, one packed ggml graph, one llama.cpp decode), giving the same tokens as
  two calls."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.accuracy import teacher_forced
from benchmarks.bench_e2e import forced_ar
from runtimes.onnx_backend import OnnxBackend, SessionConfig
from runtimes.open import detect_kind, open_backend
from runtimes.pipeline import DemaskSettings, Guidance, demask_nar_len, generate_nar
from valle_export import contracts, sequence as seq, wav
from valle_export.backend_options import BackendOptions
from valle_export.cli import main
from valle_export.errors import BadInput

from .conftest import DEMO_VARIANTS, random_conditioning

PHONEMES = "həlˈoʊ wˈɜːld, ðɪs ɪz ɐ tˈɛst."


def _cli(*args) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


# --- weight-only ONNX variants --------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["q8_0", "q4_0", "q4_128", "w8a8"])
def test_quantized_variant_tokens_and_batches(onnx_export, variant):
    onnx_export(DEMO_VARIANTS[0])  # fp32 into the same folder, first
    folder = onnx_export(DEMO_VARIANTS[0], quantize=variant)  # the export verified it (contracts.ONNX_HIDDEN_REL)
    import onnx

    fast = OnnxBackend(folder, SessionConfig(provider="cpu", variant=variant))
    exact = OnnxBackend(folder, SessionConfig(provider="cpu"))
    op = "MatMulIntegerToFloat" if variant == "w8a8" else "MatMulNBits"
    for name, per_layer in ((f"backbone.{variant}.onnx", 7), (f"ar_step.{variant}.onnx", 4)):  # step: fused
        ops = [n.op_type for n in onnx.load(str(folder / name)).graph.node]
        assert ops.count(op) == per_layer * fast.n_layers and "MatMul" not in ops, (name, sorted(set(ops)))
    assert not fast.exact and variant in fast.approximation
    worst = {"ar": 1.0, "nar": 1.0}
    for seed in range(3):
        cond = random_conditioning(seed, phonemes=30, prompt_frames=40)
        codes = generate_nar(exact, cond, forced_ar(exact, cond, 75)[0])
        got = teacher_forced(fast, cond, codes)
        worst = {k: min(worst[k], got[k]) for k in worst}
    bound = contracts.TEACHER_FORCED_AGREEMENT[variant]
    assert worst["ar"] >= bound and worst["nar"] >= bound, f"{variant}: teacher-forced agreement {worst} < {bound}"
    layout, cond = fast.layout, random_conditioning(7)
    resp = np.random.default_rng(7).integers(0, 1024, (30, 8))
    specs = [seq.ar_pass(layout, cond.phn, cond.lang, cond.prompt, resp[:, 0]),
             seq.nar_pass(layout, cond.phn, cond.lang, None, resp[:12, :3], 3),
             seq.nar_len_pass(layout, seq.null_phonemes(layout), cond.lang, None, resp[:20, 0])]
    for spec, batched in zip(specs, fast.batch_logits(specs)):
        err = contracts.rel_error(batched, fast.logits(spec))
        assert contracts.within(err, contracts.BATCH_INVARIANT_REL), f"{variant} {spec.head}: batch vs alone {err:.2e}"


@pytest.mark.parametrize("opset", [17, 23])  # below 21: Div then QuantizeLinear; from 21: one blocked QuantizeLinear
def test_w8a8_quantizes_each_row_alone(tmp_path, opset):
    """w8a8's arithmetic, written out in numpy: each activation row its own scale (max |x| / 127, zero point
    128), each weight column its own; rows of very different sizes and an all-zero row in one call."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from converters.onnx_quant import _quantize_columns, quantize_w8a8

    rng = np.random.default_rng(3)
    weight = rng.standard_normal((64, 48)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "one_matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "rows", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), tmp_path / "fp32.onnx")
    quantize_w8a8(tmp_path / "fp32.onnx", tmp_path / "w8a8.onnx")
    import onnxruntime as ort

    x = rng.standard_normal((2, 5, 64)).astype(np.float32) * np.array([1e-3, 1, 30, 1e4, 0], np.float32)[None, :, None]
    got = ort.InferenceSession(str(tmp_path / "w8a8.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    row_scale = np.maximum(np.abs(x).max(-1, keepdims=True), 1e-30) / np.float32(127)
    codes = np.clip(np.rint(x / row_scale), -128, 127).astype(np.int64)
    wq, col_scale = _quantize_columns(weight)
    want = (codes @ wq.astype(np.int64)).astype(np.float32) * col_scale * row_scale
    errors = [contracts.rel_error(got[:, r], want[:, r]) for r in range(4)]  # each row against its own size
    assert max(errors) < 1e-6 and not got[:, 4].any(), \
        f"w8a8 (opset {opset}) vs its numpy arithmetic, row by row: rel errors {errors}"
    nodes = onnx.load(str(tmp_path / "w8a8.onnx")).graph.node
    ops = [n.op_type for n in nodes]
    blocked = [n for n in nodes if n.op_type == "QuantizeLinear" and any(a.name == "block_size" for a in n.attribute)]
    # the row scale's Div on every path; the Div over x only below opset 21, where no blocked QuantizeLinear is
    assert ops.count("Div") == (2 if opset < 21 else 1) and bool(blocked) == (opset >= 21) and "Abs" not in ops, ops
    assert contracts.rel_error(got, x @ weight) < 0.02, "w8a8 far from the float product"


# --- hybrid folder --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hybrid(tmp_path_factory, demo_checkpoint):
    """A SiLU segmented demo (exact on ggml and ONNX): fp32 + q8_0 ONNX, EnCodec, and ar.f32.gguf in one folder."""
    ckpt = demo_checkpoint(*DEMO_VARIANTS[2])
    model = tmp_path_factory.mktemp("hybrid") / "model"
    _cli("onnx", ckpt, "-o", model, "-q")
    _cli("onnx", ckpt, "-o", model, "--outtype", "q8_0", "-q")
    _cli("encodec", model, "-q")
    _cli("gguf", ckpt, "-o", model / "ar.f32.gguf", "--outtype", "f32", "-q")
    return model


def _synth(model: Path, out: Path, *extra) -> dict:
    text = _cli("synthesize", model, "--out", out, "--json", "-q", "--phonemes", PHONEMES, "--ar-temperature", "0",
                "--max-duration", "2", "--demask-steps", "6", *extra)
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.parametrize("modality", ["ar+nar", "nar-len"])
def test_hybrid_folder_equals_onnx_alone(hybrid, tmp_path, modality):
    assert detect_kind(hybrid) == "hybrid"
    both = _synth(hybrid, tmp_path / "hybrid.wav", "--modality", modality)
    alone = _synth(hybrid, tmp_path / "onnx.wav", "--modality", modality, "--backend", "onnx")
    assert both["backend"] == "ggml+onnx" and both["exact"], both
    assert alone["backend"] == "onnx" and both["frames"] == alone["frames"] > 0, (both, alone)
    a, b = (wav.read_wav(tmp_path / f"{k}.wav")[0][:, 0] for k in ("hybrid", "onnx"))
    err = float(np.abs(a - b).max())
    assert err == 0.0, f"hybrid vs onnx: waveform max abs {err:.3e} (codes differ?)"


def test_hybrid_variant_is_labelled(hybrid, tmp_path):
    summary = _synth(hybrid, tmp_path / "q8.wav", "--variant", "q8_0")
    assert summary["backend"] == "ggml+onnx" and not summary["exact"] and "q8_0" in summary["approximation"], summary


def test_hybrid_folder_refusals(hybrid, tmp_path, gguf_export):
    import shutil

    folder = tmp_path / "two"
    shutil.copytree(hybrid, folder)
    shutil.copyfile(folder / "ar.f32.gguf", folder / "ar.second.gguf")
    with pytest.raises(BadInput, match="exactly one ar"):
        open_backend(folder, "auto", BackendOptions(threads=1))
    (folder / "ar.second.gguf").unlink()
    shutil.copyfile(gguf_export(DEMO_VARIANTS[0]), folder / "ar.f32.gguf")  # another model's GGUF
    with pytest.raises(BadInput, match="different layouts|different checkpoints"):
        open_backend(folder, "auto", BackendOptions(threads=1))


# --- guided passes batched --------------------------------------------------------------------------------------
class _Unbatched:
    """The same backend seen without its batch axis (two calls per guided pass)."""

    def __init__(self, backend):
        self.layout, self.logits = backend.layout, backend.logits
        self.prefill, self.extend = backend.prefill, backend.extend


class _Counting:
    def __init__(self, backend):
        self.layout, self.logits, self.calls = backend.layout, backend.logits, 0
        self._batch = backend.batch_logits

    def batch_logits(self, specs):
        self.calls += 1
        return self._batch(specs)


def _assert_demask_one_call_per_step(backend, cond, frames: int, steps: int, label: str) -> _Counting:
    """NAR-len demasking through `batch_logits` makes one call per step and gives the tokens of two calls."""
    counting = _Counting(backend)
    settings = DemaskSettings(steps=steps)
    batched, _ = demask_nar_len(counting, cond, frames, settings)
    alone, _ = demask_nar_len(_Unbatched(backend), cond, frames, settings)
    assert counting.calls == settings.steps, f"{label}: {counting.calls} batched calls for {settings.steps} steps"
    assert (batched == alone).all(), f"{label}: {int((batched != alone).sum())} of {len(alone)} NAR-len tokens differ"
    return counting


def test_guided_passes_batched_give_the_same_tokens(onnx_export):
    backend = OnnxBackend(onnx_export(DEMO_VARIANTS[0]), SessionConfig(provider="cpu"))
    cond = random_conditioning(3, phonemes=20, prompt_frames=25)
    counting = _assert_demask_one_call_per_step(backend, cond, 40, 8, "onnx")
    guidance = Guidance(3.0)
    codes0 = np.random.default_rng(3).integers(0, 1024, 40)
    got = generate_nar(counting, cond, codes0, guidance=guidance)
    want = generate_nar(_Unbatched(backend), cond, codes0, guidance=guidance)
    assert (got == want).all(), f"{int((got != want).sum())} guided NAR tokens differ"


# --- ggml f16 KV cache ------------------------------------------------------------------------------------------
def test_ggml_f16_kv_cache_within_its_bound(gguf_export):
    """Half the cache bytes per AR step; labelled approximate with contracts.F16_KV_REL (measured 3.2e-4 at the
    released size with f32 weights). 70 steps: the reused step graph converts the new K/V to f16 in place
    (ggml_set_rows) across two attention spans."""
    from runtimes.ggml_backend import GgmlBackend
    from valle_export import names

    path = gguf_export(DEMO_VARIANTS[0])
    exact, half = GgmlBackend(path, 1, 256), GgmlBackend(path, 1, 256, "f16")
    assert exact.exact and not half.exact and "f16 KV" in half.approximation
    cond = random_conditioning(4)
    spec = seq.ar_pass(exact.layout, cond.phn, cond.lang, cond.prompt, [])
    want, got = [exact.prefill(spec)], [half.prefill(spec)]
    for code in np.random.default_rng(4).integers(0, 1024, 70):
        spec = seq.extend(exact.layout, spec, names.HEAD_AR, [int(code)])
        want.append(exact.extend(spec))
        got.append(half.extend(spec))
    err = contracts.rel_error(np.array(got), np.array(want))
    assert contracts.within(err, contracts.F16_KV_REL), f"f16 KV cache: logits rel {err:.2e} > {contracts.F16_KV_REL}"
    with pytest.raises(BadInput, match="kv_type"):
        GgmlBackend(path, 1, 256, "q8_0")


@pytest.mark.parametrize("kind", ["ggml", "llamacpp"])
def test_gguf_guided_pairs_in_one_call(gguf_export, kind):
    """ggml packs a guided pair into one graph (block-diagonal mask), llama.cpp into one decode (a sequence
    each): each pass's logits equal the pass alone up to summation order, and NAR-len demasking makes one
    call per step with the same tokens as two."""
    backend = open_backend(gguf_export(DEMO_VARIANTS[0]), kind, BackendOptions(threads=2))
    layout, cond = backend.layout, random_conditioning(4, phonemes=20, prompt_frames=25)
    resp = np.random.default_rng(4).integers(0, 1024, (30, 8))
    masked = np.where(np.arange(30) % 3 == 0, layout.mask_token, resp[:, 0])
    pairs = [[seq.nar_len_pass(layout, cond.phn, cond.lang, cond.prompt, masked),
              seq.nar_len_pass(layout, seq.null_phonemes(layout), cond.lang, None, masked)],
             [seq.nar_pass(layout, cond.phn, cond.lang, cond.prompt, resp[:, :2], 2),
              seq.nar_pass(layout, seq.null_phonemes(layout), cond.lang, None, resp[:, :2], 2)]]
    bound = contracts.PACKED_PASS_REL if backend.exact else contracts.PACKED_PASS_TABLE_GELU_REL
    for pair in pairs:
        for spec, batched in zip(pair, backend.batch_logits(pair)):
            err = contracts.rel_error(batched, backend.logits(spec))
            assert contracts.within(err, bound), f"{kind} {spec.head}: packed vs alone {err:.2e} (bound {bound:g})"
    _assert_demask_one_call_per_step(backend, cond, 30, 6, kind)


def test_repeated_rounds_table_gives_median_range_and_count_under_one(capsys):
    """bench_e2e --repeat: each row's RTF per round, its median, range and rounds under real time; a row that
    failed in a round shows '-' there and is left out of its statistics."""
    from benchmarks.bench_e2e import print_rounds

    rounds = [{"bandwidth": 30e9, "rtf": {"a": 0.9, "b": 1.3}}, {"bandwidth": 24e9, "rtf": {"a": 1.1}},
              {"bandwidth": 33e9, "rtf": {"a": 0.8, "b": 1.2}}]
    print_rounds(rounds, ["a", "b", "never"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "over 3 rounds" in lines[0] and "| round 2 (24.0 GB/s) |" in lines[1]
    assert lines[3] == "| a | 0.90 | 1.10 | 0.80 | 0.90 | 0.80 - 1.10 | 2 of 3 |"
    assert lines[4] == "| b | 1.30 | - | 1.20 | 1.25 | 1.20 - 1.30 | 0 of 2 |"
    assert len(lines) == 5  # a row with no measurement is not printed
