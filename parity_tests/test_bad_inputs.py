"""Bad input: one clear line naming the file, exit code 2, no traceback, no half-written output."""
import json
import struct

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from valle_export.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], lines[0]


def rewrite(src, dst, tensors=None, config=None):
    t = load_file(str(src / "fp32.sft")) if tensors is None else tensors
    from safetensors import safe_open

    with safe_open(str(src / "fp32.sft"), "pt") as f:
        meta = dict(f.metadata())
    if config is not None:
        meta["config"] = json.dumps(config)
    dst.mkdir(parents=True, exist_ok=True)
    save_file(t, str(dst / "fp32.sft"), metadata=meta)
    return dst


@pytest.fixture
def ckpt(demo_checkpoint):
    return demo_checkpoint()


def test_missing_file(tmp_path):
    assert_one_line_error(run("convert", tmp_path / "nope.sft", tmp_path / "out"), "nope.sft", "not found")
    assert not (tmp_path / "out").exists()


def test_folder_without_checkpoint(tmp_path):
    assert_one_line_error(run("convert", tmp_path, tmp_path / "out"), "no fp32.sft")


def test_corrupt_and_truncated(tmp_path, ckpt):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "fp32.sft").write_bytes(b"\x00" * 5)
    assert_one_line_error(run("convert", bad, tmp_path / "o1"), "not a safetensors file")
    data = (ckpt / "fp32.sft").read_bytes()
    (bad / "fp32.sft").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("convert", bad, tmp_path / "o2"), "truncated")
    (bad / "fp32.sft").write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\x00" * 100)
    assert_one_line_error(run("convert", bad, tmp_path / "o3"), "header is not JSON")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_config_missing_keys(tmp_path, ckpt):
    from safetensors import safe_open

    with safe_open(str(ckpt / "fp32.sft"), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    del cfg["size"]["layers"]
    bad = rewrite(ckpt, tmp_path / "bad", config=cfg)
    assert_one_line_error(run("convert", bad, tmp_path / "o"), "fp32.sft", "missing size.layers")


def test_v2_model_refused_by_name(tmp_path, ckpt):
    from safetensors import safe_open

    with safe_open(str(ckpt / "fp32.sft"), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    cfg["version"] = 7
    bad = rewrite(ckpt, tmp_path / "bad", config=cfg)
    assert_one_line_error(run("convert", bad, tmp_path / "o"), "v2 models", "version 7")


def test_shape_disagrees_with_config(tmp_path, ckpt):
    t = load_file(str(ckpt / "fp32.sft"))
    t["model.layers.1.mlp.up_proj.weight"] = torch.zeros(100, 64)
    del t["classifiers.proj.3.bias"]
    t["extra.weight"] = torch.zeros(2)
    bad = rewrite(ckpt, tmp_path / "bad", tensors=t)
    r = run("convert", bad, tmp_path / "o")
    assert_one_line_error(r, "missing 1 tensor(s): classifiers.proj.3.bias", "unexpected 1 tensor(s): extra.weight",
                          "model.layers.1.mlp.up_proj.weight (100, 64) (config says (256, 64))")


def test_pth_checkpoint_loads_and_bad_pth_refused(tmp_path, ckpt):
    from safetensors import safe_open

    from reference_model.load import load_reference

    with safe_open(str(ckpt / "fp32.sft"), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    pth = tmp_path / "ok" / "fp32.pth"
    pth.parent.mkdir()
    torch.save({"module": load_file(str(ckpt / "fp32.sft")), "config": cfg}, pth)
    a, b = load_reference(ckpt), load_reference(pth)
    assert torch.equal(a.llama.lm_head.weight, b.llama.lm_head.weight)
    nomod = tmp_path / "nomod.pth"
    torch.save({"weights": {}}, nomod)
    assert_one_line_error(run("convert", nomod, tmp_path / "o"), "no 'module'")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"garbage" * 10)
    assert_one_line_error(run("convert", junk, tmp_path / "o"), "junk.pth", "cannot load")


def test_bad_options(tmp_path):
    assert_one_line_error(run("demo-checkpoint", tmp_path / "d", "--capabilities", "ar,tts"), "unknown capability tts")
    r = run("demo-checkpoint", tmp_path / "d", "--size", "huge")
    assert r.exit_code == 2 and "huge" in r.output


def test_no_partial_output_when_writing_fails(tmp_path, ckpt, monkeypatch):
    import reference_model.hf_folder as hf

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(hf, "save_file", boom)
    out = tmp_path / "out"
    with pytest.raises(OSError):
        hf.save_uniform_folder(__import__("reference_model.load", fromlist=["x"]).load_reference(ckpt), out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "temp folder left behind"
