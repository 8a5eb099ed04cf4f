"""LoRA at run time on stock llama.cpp: `gguf-lora` writes an adapter GGUF that llama_adapter_lora_init loads,
and the base + adapter matches the merged export (fixture mrq-lora on gemma; seeded SiLU demos on qwen2vl and on
llama, where Q rows are permuted), with bounds from valle_export.contracts."""
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from valle_export import contracts, names, tensor_table as tt

from .backend_checks import all_passes
from .bad_input_checks import invoke, refused
from .conftest import DEMO_VARIANTS, lora_fixture, random_conditioning

FIXTURE = lora_fixture()
pytest.importorskip("llama_cpp")


def _adapter(tmp_path, cli_base, lora):
    out = tmp_path / "adapter.gguf"
    r = invoke("gguf-lora", lora, "--base", cli_base, "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    return out


def _worst(specs, a, b):
    return max(contracts.rel_error(a.logits(s), b.logits(s)) for s in specs)


@pytest.mark.skipif(FIXTURE is None, reason="no LoRA fixture")
def test_fixture_adapter_matches_merged_and_original(tmp_path, gguf_export):
    from runtimes.fixture_check import _pass_spec, load_fixture
    from runtimes.llama_backend import LlamaConfig, LlamaCppBackend

    base, merged = gguf_export(checkpoint=FIXTURE), gguf_export(checkpoint=FIXTURE, lora=FIXTURE / "lora.sft")
    adapter = _adapter(tmp_path, base, FIXTURE / "lora.sft")
    with LlamaCppBackend(base, LlamaConfig(lora=adapter)) as run, LlamaCppBackend(merged) as m, \
            LlamaCppBackend(base) as plain:
        assert run.adapter.record.name == "fixture" and not run.state_problem
        fx = load_fixture(FIXTURE)
        cases = sorted(k[:-len(".logits")] for k in fx.tensors if k.endswith(".logits"))
        vs_merged = vs_original = base_off = 0.0
        for case in cases:
            spec, want = _pass_spec(fx, run.layout, case), fx.tensors[f"{case}.logits"]
            got = run.logits(spec)[-len(want):]
            vs_merged = max(vs_merged, contracts.rel_error(got, m.logits(spec)[-len(want):]))
            vs_original = max(vs_original, contracts.rel_error(got, want))
            base_off = max(base_off, contracts.rel_error(plain.logits(spec)[-len(want):], want))
    assert vs_merged <= contracts.LORA_RUNTIME_VS_MERGED_REL, f"adapter vs merged {vs_merged:.3e} ({len(cases)} passes)"
    assert vs_original <= contracts.GELU_TANH_REL, f"adapter vs the original {vs_original:.3e}"
    assert base_off > 0.1, f"the base without its adapter should miss the LoRA cases, {base_off:.3e}"


def _random_lora(path, cfg, seed=3, rank=4, alpha=8):
    rng = np.random.default_rng(seed)
    d, kv = cfg.d_model, cfg.n_heads * cfg.head_dim
    tensors = {}
    for layer in range(cfg.n_layers):
        for row in tt.LORA_TENSORS:
            out_f, in_f = row.shape_for(d, kv, cfg.d_ffn)
            key = names.native_layer_tensor(layer, row.lora_suffix("{}"))
            tensors[key.format("A")] = (rng.standard_normal((rank, in_f)) / np.sqrt(in_f)).astype(np.float32)
            tensors[key.format("B")] = (rng.standard_normal((out_f, rank)) * 0.3).astype(np.float32)
    config = {"name": "demo", "rank": rank, "alpha": alpha, "rvq_levels": [], "parametrize": False}
    save_file(tensors, str(path), metadata={names.META_CONFIG: json.dumps(config)})
    return path


@pytest.mark.parametrize("variant,arch", [(DEMO_VARIANTS[2], None), (DEMO_VARIANTS[3], "llama")],
                         ids=["silu-segmented-qwen2vl", "silu-unified-llama-permuted-q"])
def test_silu_adapter_is_exact(variant, arch, tmp_path, demo_checkpoint, gguf_export):
    from reference_model.backend import TorchBackend
    from reference_model.load import load_reference
    from runtimes.llama_backend import LlamaConfig, LlamaCppBackend

    ckpt = demo_checkpoint(*variant)
    lora = _random_lora(tmp_path / "lora.sft", load_reference(ckpt).cfg)
    base, merged = gguf_export(variant, arch=arch), gguf_export(variant, arch=arch, checkpoint=ckpt, lora=lora)
    adapter = _adapter(tmp_path, base, lora)
    ref = TorchBackend(load_reference(ckpt, lora))
    resp = np.random.default_rng(6).integers(0, 1024, (12, 8))
    specs = [s for _, s in all_passes(ref.layout, random_conditioning(5), resp)]
    with LlamaCppBackend(base, LlamaConfig(lora=adapter, n_ctx=512)) as run, \
            LlamaCppBackend(merged, LlamaConfig(n_ctx=512)) as m:
        assert run.exact, run.approximation
        vs_merged, vs_ref = _worst(specs, run, m), _worst(specs, run, ref)
    assert vs_merged <= contracts.LOGITS_REL_EXACT, f"{arch or 'qwen2vl'}: adapter vs merged {vs_merged:.3e}"
    assert vs_ref <= contracts.LOGITS_REL_EXACT, f"{arch or 'qwen2vl'}: adapter vs merged torch reference {vs_ref:.3e}"


@pytest.mark.skipif(FIXTURE is None, reason="no LoRA fixture")
def test_bad_adapters_and_bases(tmp_path, gguf_export, demo_checkpoint):
    base = gguf_export(checkpoint=FIXTURE)
    merged = gguf_export(checkpoint=FIXTURE, lora=FIXTURE / "lora.sft")
    refused([tmp_path], "gguf-lora", FIXTURE / "lora.sft", "--base", merged, "-o", tmp_path / "a.gguf", "-q",
            needles=["already has an adapter merged"])
    other = gguf_export(DEMO_VARIANTS[0])  # another model: the adapter's shapes do not fit
    refused([tmp_path], "gguf-lora", FIXTURE / "lora.sft", "--base", other, "-o", tmp_path / "a.gguf", "-q",
            needles=["match no module"])
    adapter = _adapter(tmp_path, base, FIXTURE / "lora.sft")
    wav = tmp_path / "x.wav"
    line = refused([tmp_path], "synthesize", base, "--lora", base, "--phoneme-ids", "1,2", "--out", wav, "-q",
                   "--codec", tmp_path, needles=[])
    assert "no EnCodec graphs" in line or "not a LoRA adapter" in line, line
    from runtimes.llama_backend import LlamaConfig, LlamaCppBackend
    from valle_export.errors import BadInput

    with pytest.raises(BadInput, match="not a LoRA adapter GGUF"):
        LlamaCppBackend(base, LlamaConfig(lora=base))
    with pytest.raises(BadInput, match="adapter is for arch 'gemma'"):
        LlamaCppBackend(gguf_export(DEMO_VARIANTS[2]), LlamaConfig(lora=adapter))
    from runtimes.open import open_backend
    from valle_export.backend_options import BackendOptions

    with pytest.raises(BadInput, match="llama.cpp backend only"):
        open_backend(base, "ggml", BackendOptions(lora=str(adapter)))
