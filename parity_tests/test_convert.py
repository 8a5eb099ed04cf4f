"""`valle-export convert`: an HF folder that transformers loads, and a bit-identical round trip."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from valle_export import names, sequence as seq
from valle_export.cli import main

from .conftest import DEMO_VARIANTS, fixture_dirs, random_conditioning


@pytest.mark.parametrize("variant", DEMO_VARIANTS[:2], ids=lambda v: "-".join(v))
def test_round_trip_bit_identical(tmp_path, demo_checkpoint, variant):
    from reference_model.load import load_reference

    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(demo_checkpoint(*variant), ckpt)  # never modify the shared session checkpoint
    (ckpt / names.TOKENIZER_FILE).write_text('{"model": {}}')
    out = tmp_path / "uniform"
    result = CliRunner().invoke(main, ["convert", str(ckpt), str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (out / names.TOKENIZER_FILE).read_text() == '{"model": {}}'
    a, b = load_reference(ckpt), load_reference(out)
    cond = random_conditioning(0)
    resp = np.random.default_rng(1).integers(0, 1024, (9, 8))
    specs = [seq.ar_pass(a.layout, cond.phn, cond.lang, cond.prompt, resp[:, 0]),
             seq.nar_pass(a.layout, cond.phn, cond.lang, cond.prompt, resp, 5),
             seq.nar_len_pass(a.layout, cond.phn, cond.lang, cond.prompt, resp[:, 0]),
             seq.len_pass(a.layout, cond.phn, cond.lang, cond.prompt, [0, 3])]
    for spec in specs:
        la, lb = a.pass_logits(spec).numpy(), b.pass_logits(spec).numpy()
        assert np.array_equal(la, lb), f"{spec.head}: max diff {np.abs(la - lb).max():.3e} after round trip"


def test_folder_is_a_plain_transformers_model(tmp_path, demo_checkpoint):
    import torch
    from transformers import AutoModelForCausalLM

    from reference_model.load import load_reference

    ckpt = demo_checkpoint("silu", "unified", "causal")
    out = tmp_path / "u"
    assert CliRunner().invoke(main, ["convert", str(ckpt), str(out), "-q"]).exit_code == 0
    hf = AutoModelForCausalLM.from_pretrained(out)
    ref = load_reference(ckpt)
    layout = json.loads((out / names.LAYOUT_FILE).read_text())
    assert hf.config.vocab_size == layout["vocab_size"] == 17702
    assert hf.config.hidden_act == "silu" and not hf.config.tie_word_embeddings
    # single-row positions: plain input_ids through the stock model give the reference's head rows
    ids = torch.tensor([[3, 291, 264, 291, 256, 291, 300, 301, 291, 8484 + 5]])
    with torch.no_grad():
        logits = hf(input_ids=ids).logits[0, -1]
    h = ref.layout.head("AR:0:0")
    bias = ref.head_bias[h.start:h.stop]
    rows = np.array([[i] for i in ids[0].tolist()])
    want = ref.head_logits(ref.hidden(ref.embed(rows), np.arange(len(rows)), True)[-1:], "AR:0:0")[0]
    assert torch.allclose(logits[h.start:h.stop] + bias, want, atol=1e-5), "HF folder differs from reference"
    # rows outside every head are zero
    used = np.zeros(17702, bool)
    for head in ref.layout.heads:
        used[head.start:head.stop] = True
    assert float(hf.lm_head.weight.detach()[torch.from_numpy(~used)].abs().max()) == 0.0


@pytest.mark.skipif(not fixture_dirs(), reason="no fixtures")
def test_fixture_converts_and_still_passes(tmp_path):
    fx = fixture_dirs()[0]
    out = tmp_path / "u"
    assert CliRunner().invoke(main, ["convert", str(fx), str(out), "-q"]).exit_code == 0
    import shutil

    shutil.copy(fx / "cases.safetensors", out / "cases.safetensors")
    result = CliRunner().invoke(main, ["check-fixture", str(out)])
    assert result.exit_code == 0, result.output
