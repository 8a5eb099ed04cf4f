"""`valle-export demo-checkpoint`: a native-format checkpoint that the loader accepts, seeded."""
import json

import pytest
from click.testing import CliRunner
from safetensors import safe_open

from valle_export.cli import main


@pytest.mark.parametrize("args, expect", [
    ([], {"hidden_act": "gelu", "unified_position_ids": False, "noncausal_masks": True}),
    (["--hidden-act", "silu", "--positions", "unified", "--masks", "causal"],
     {"hidden_act": "silu", "unified_position_ids": True, "noncausal_masks": False}),
])
def test_options_reach_the_config(tmp_path, args, expect):
    r = CliRunner().invoke(main, ["demo-checkpoint", str(tmp_path), "-q", *args])
    assert r.exit_code == 0, r.output
    with safe_open(str(tmp_path / "fp32.sft"), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
        assert f.get_slice("raw_text_emb.weight").get_shape() == [8575, 64]
    for k, v in expect.items():
        assert cfg["experimental"][k] == v


def test_seed_determines_weights(tmp_path):
    from safetensors.torch import load_file

    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        r = CliRunner().invoke(main, ["demo-checkpoint", str(tmp_path / name), "--seed", str(seed), "-q"])
        assert r.exit_code == 0, r.output
    a, b, c = (load_file(str(tmp_path / n / "fp32.sft"))["sep"] for n in "abc")
    assert (a == b).all() and not (a == c).all()


def test_capabilities_without_len(tmp_path):
    from reference_model.load import load_reference

    r = CliRunner().invoke(main, ["demo-checkpoint", str(tmp_path), "--capabilities", "ar,nar", "-q"])
    assert r.exit_code == 0
    model = load_reference(tmp_path)
    assert "len" not in [h.name for h in model.layout.heads]
