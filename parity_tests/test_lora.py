"""LoRA at export (`--lora` on convert / onnx / gguf): the merge W + (alpha/rank) B A reproduces the original's
LoRA logits (fixture mrq-lora), every export records the adapter and `inspect` shows it, and every malformed
adapter is one error line."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from valle_export import contracts, graphs, names

from .bad_input_checks import invoke, refused
from .conftest import lora_fixture

FIXTURE = lora_fixture()
pytestmark = pytest.mark.skipif(FIXTURE is None, reason="no LoRA fixture (mrq-lora) found")


def _logit_cases(path):
    t = load_file(str(path))
    return t, sorted(k[:-len(".logits")] for k in t if k.endswith(".logits"))


def _worst_rel(model, cases_file) -> tuple[float, int]:
    from reference_model.backend import TorchBackend
    from runtimes.fixture_check import Fixture, _pass_spec

    t, cases = _logit_cases(cases_file)
    fx, backend = Fixture(FIXTURE, t, {}), TorchBackend(model)
    worst = 0.0
    for case in cases:
        want = t[f"{case}.logits"]
        got = backend.logits(_pass_spec(fx, backend.layout, case))[-want.shape[0]:]
        worst = max(worst, contracts.rel_error(got, want))
    return worst, len(cases)


def test_merge_reproduces_the_originals_lora_logits():
    from reference_model.load import load_reference

    merged = load_reference(FIXTURE, FIXTURE / "lora.sft")
    worst, n = _worst_rel(merged, FIXTURE / "cases.safetensors")
    assert n >= 12 and worst <= contracts.LOGITS_REL_EXACT, f"merged: worst rel {worst:.3e} over {n} passes"
    base_worst, _ = _worst_rel(load_reference(FIXTURE), FIXTURE / "cases.safetensors")
    assert base_worst > 0.1, f"without the merge the LoRA cases should fail, rel {base_worst:.3e}"
    assert merged.lora.rank == 8 and merged.lora.alpha == 4 and merged.lora.scale == 0.5
    assert merged.lora.modules == 18, merged.lora


def _write_adapter(path, tensors, config):
    meta = {} if config is None else {names.META_CONFIG: json.dumps(config)}
    save_file(tensors, str(path), metadata=meta)
    return path


def _good():
    from safetensors import safe_open

    with safe_open(str(FIXTURE / "lora.sft"), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()[names.META_CONFIG])


Q_A = "model.layers.0.self_attn.q_proj.lora_A"
Q_B = "model.layers.0.self_attn.q_proj.lora_B"


def _bad_adapters():
    """(id, change to the tensors, change to the config, expected words in the error line)"""
    def add(name, shape):
        return lambda t: {**t, name: np.zeros(shape, np.float32)}

    return [
        ("k_proj", add("model.layers.0.self_attn.k_proj.lora_A", (8, 48)), None, "match no module"),
        ("layer_out_of_range", add("model.layers.3.self_attn.q_proj.lora_A", (8, 48)), None, "match no module"),
        ("embedding", add("text_emb.lora_A", (8, 48)), None, "match no module"),
        ("missing_partner", lambda t: {k: v for k, v in t.items() if k != Q_B}, None, "missing partner"),
        ("wrong_shape", lambda t: {**t, Q_A: np.zeros((4, 48), np.float32)}, None, "shape mismatch"),
        ("rank_mismatch", None, lambda c: {**c, "rank": 16}, "shape mismatch (rank 16)"),
        ("rvq_levels", None, lambda c: {**c, "rvq_levels": [1, 2]}, "rvq_levels"),
        ("parametrize", None, lambda c: {**c, "parametrize": True}, "parametrize"),
        ("alpha", None, lambda c: {**c, "alpha": 0}, "alpha"),
        ("no_config", None, lambda c: None, "no 'config'"),
        ("nan", lambda t: {**t, Q_A: np.full((8, 48), np.nan, np.float32)}, None, "not finite"),
    ]


@pytest.mark.parametrize("case", _bad_adapters(), ids=lambda c: c[0])
def test_bad_adapter_is_one_error_line(tmp_path, case):
    _, change_tensors, change_config, needle = case
    tensors, config = _good()
    tensors = change_tensors(tensors) if change_tensors else tensors
    config = change_config(config) if change_config else config
    bad = _write_adapter(tmp_path / "lora.sft", tensors, config)
    line = refused([tmp_path], "convert", FIXTURE, tmp_path / "out", "--lora", bad, "-q", needles=[needle, bad])
    assert line.startswith(f"error: {bad}: "), line


def test_adapter_must_be_safetensors(tmp_path):
    pth = tmp_path / "lora.pth"
    pth.write_bytes((FIXTURE / "lora.sft").read_bytes())
    refused([tmp_path], "convert", FIXTURE, tmp_path / "out", "--lora", pth, "-q", needles=["safetensors", pth])


@pytest.fixture(scope="module")
def uniform_lora(tmp_path_factory):
    out = tmp_path_factory.mktemp("uniform") / "u"
    result = invoke("convert", FIXTURE, out, "--lora", FIXTURE / "lora.sft", "-q")
    assert result.exit_code == 0, result.stderr
    return out


def test_uniform_folder_records_and_reloads_the_adapter(uniform_lora):
    from reference_model.load import load_reference

    record = json.loads((uniform_lora / names.LORA_RECORD_FILE).read_text())
    assert record["name"] == "fixture" and record["scale"] == 0.5 and record["file"] == "lora.sft"
    model = load_reference(uniform_lora)
    assert model.lora is not None and model.lora.sha256 == record["sha256"]
    worst, n = _worst_rel(model, FIXTURE / "cases.safetensors")
    assert worst <= contracts.LOGITS_REL_EXACT, f"reloaded uniform folder: worst rel {worst:.3e} over {n} passes"
    shown = invoke("inspect", uniform_lora)
    assert shown.exit_code == 0 and "merged adapter: 'fixture' from lora.sft (rank 8, alpha 4" in shown.stdout, \
        shown.stdout
    plain = invoke("inspect", FIXTURE)  # a checkpoint folder is not an export
    assert plain.exit_code == 2


def test_second_adapter_on_a_merged_model_is_refused(uniform_lora, tmp_path):
    refused([tmp_path, uniform_lora], "convert", uniform_lora, tmp_path / "again", "--lora", FIXTURE / "lora.sft",
            "-q", needles=["already has adapter 'fixture'"])


def test_gguf_records_the_adapter(tmp_path):
    import gguf

    out = tmp_path / "m.gguf"
    result = invoke("gguf", FIXTURE, "-o", out, "--outtype", "f32", "--lora", FIXTURE / "lora.sft", "-q")
    assert result.exit_code == 0, result.stderr
    field = gguf.GGUFReader(str(out)).fields[names.GGUF_LORA]
    assert json.loads(field.contents())["name"] == "fixture"
    shown = invoke("inspect", out)
    assert "merged adapter: 'fixture'" in shown.stdout, shown.stdout
    base = tmp_path / "base.gguf"
    assert invoke("gguf", FIXTURE, "-o", base, "--outtype", "f32", "-q").exit_code == 0
    assert "merged adapter: none" in invoke("inspect", base).stdout


def test_onnx_records_the_adapter(tmp_path):
    import onnx

    out = tmp_path / "onnx"
    result = invoke("onnx", FIXTURE, out, "--lora", FIXTURE / "lora.sft", "-q")
    assert result.exit_code == 0, result.stderr
    meta = {p.key: p.value for p in onnx.load(str(out / graphs.BACKBONE_FILE), load_external_data=False).metadata_props}
    assert json.loads(meta[graphs.META_LORA])["alpha"] == 4
    assert "merged adapter: 'fixture'" in invoke("inspect", out).stdout
    assert "merged adapter: 'fixture'" in invoke("inspect", out / graphs.BACKBONE_FILE).stdout
