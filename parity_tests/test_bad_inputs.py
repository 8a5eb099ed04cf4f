"""Bad checkpoints: one clear line naming the file, exit code 2, no traceback, nothing written.

Loader parse errors are caught where they arise (safetensors header and offsets, config JSON and types, sizes,
`.pth` files that are not torch files, uniform folders); non-finite weights are refused at load, naming the
tensor; every verification comparison fails on NaN. Each case is a real file run through the real CLI."""
import json
import math
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from .bad_input_checks import assert_one_line_error, invoke, refused  # noqa: F401 (re-exported for other tests)


def rewrite(src, dst, tensors=None, config=None):
    t = load_file(str(src / "fp32.sft")) if tensors is None else tensors
    from safetensors import safe_open

    with safe_open(str(src / "fp32.sft"), "pt") as f:
        meta = dict(f.metadata())
    if config is not None:
        meta["config"] = config if isinstance(config, str) else json.dumps(config)
    dst.mkdir(parents=True, exist_ok=True)
    save_file(t, str(dst / "fp32.sft"), metadata=meta)
    return dst


def demo_config(ckpt) -> dict:
    from safetensors import safe_open

    with safe_open(str(ckpt / "fp32.sft"), "pt") as f:
        return json.loads(f.metadata()["config"])


@pytest.fixture
def ckpt(demo_checkpoint):
    return demo_checkpoint()


# --- missing, truncated, corrupt files ---------------------------------------------------------------------

def test_missing_file(tmp_path):
    refused([tmp_path], "convert", tmp_path / "nope.sft", tmp_path / "out", "-q", needles=("nope.sft", "not found"))


def test_folder_without_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    refused([tmp_path], "convert", tmp_path / "empty", tmp_path / "out", "-q", needles=("empty", "no fp32.sft"))


def test_corrupt_and_truncated(tmp_path, ckpt):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "fp32.sft").write_bytes(b"\x00" * 5)
    refused([tmp_path], "convert", bad, tmp_path / "o1", "-q", needles=("fp32.sft", "not a safetensors file"))
    data = (ckpt / "fp32.sft").read_bytes()
    (bad / "fp32.sft").write_bytes(data[: len(data) // 2])
    refused([tmp_path], "convert", bad, tmp_path / "o2", "-q", needles=("fp32.sft", "truncated"))
    (bad / "fp32.sft").write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\x00" * 100)
    refused([tmp_path], "convert", bad, tmp_path / "o3", "-q", needles=("fp32.sft", "header is not JSON"))


def _header_and_data(ckpt) -> tuple[dict, bytes]:
    raw = (ckpt / "fp32.sft").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _with_header(header, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


FIRST = "model.layers.0.self_attn.q_proj.weight"


def _set(name, key, value):
    def mutate(h):
        h[name][key] = value
    return mutate


HEADER_CASES = {
    "unknown dtype": (_set(FIRST, "dtype", "Q99"), "unknown dtype"),
    "negative shape": (_set(FIRST, "shape", [-1, 64]), "is not a list of sizes"),
    "offsets decreasing": (_set(FIRST, "data_offsets", [100, 50]), "two increasing byte offsets"),
    "offsets as strings": (_set(FIRST, "data_offsets", ["0", "4"]), "two increasing byte offsets"),
    "offsets of 3 values": (_set(FIRST, "data_offsets", [0, 4, 8]), "two increasing byte offsets"),
    "offsets span wrong size": (_set(FIRST, "data_offsets", [0, 4]), "needs 16384"),
    "offsets beyond the end": (lambda h: h[FIRST].update(shape=[2 ** 30, 64], data_offsets=[0, 2 ** 38]),
                               "truncated"),
    "entry not an object": (lambda h: h.update({"extra": 5}), "entry is not an object"),
    "metadata not strings": (lambda h: h["__metadata__"].update(config={"size": 1}), "map of strings"),
    "no config": (lambda h: h["__metadata__"].pop("config"), "has no 'config'"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_safetensors_header_errors(tmp_path, ckpt, case):
    mutate, needle = HEADER_CASES[case]
    header, data = _header_and_data(ckpt)
    mutate(header)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "fp32.sft").write_bytes(_with_header(header, data))
    refused([tmp_path], "convert", tmp_path / "bad", tmp_path / "out", "-q", needles=("fp32.sft", needle))


@pytest.mark.parametrize("raw, needle", [
    (b"[1, 2]", "header is not an object"),
    (b"\xff\xfe\x00garbage", "header is not JSON"),
    (b"[" * 5000, "header is not JSON"),
])
def test_safetensors_header_not_an_object(tmp_path, raw, needle):
    raw += b" " * (-len(raw) % 8)
    (tmp_path / "bad.sft").write_bytes(struct.pack("<Q", len(raw)) + raw)
    refused([tmp_path], "convert", tmp_path / "bad.sft", tmp_path / "out", "-q", needles=("bad.sft", needle))


def test_safetensors_header_length_huge(tmp_path):
    (tmp_path / "bad.sft").write_bytes(struct.pack("<Q", 2 ** 60) + b"{}" * 8)
    refused([tmp_path], "convert", tmp_path / "bad.sft", tmp_path / "out", "-q",
            needles=("bad.sft", "header length beyond end of file"))


# --- config JSON and types ---------------------------------------------------------------------------------

def _cfg(mutate):
    def make(cfg):
        mutate(cfg)
        return cfg
    return make


CONFIG_CASES = {
    "not JSON": (lambda cfg: "{not json", "config is not valid JSON"),
    "not an object": (lambda cfg: "[1, 2]", "config is not a JSON object"),
    "no size": (_cfg(lambda c: c.pop("size")), "no 'size' object"),
    "missing layers": (_cfg(lambda c: c["size"].pop("layers")), "missing size.layers"),
    "experimental is a list": (_cfg(lambda c: c.update(experimental=[1, 2])), "experimental is list, not an object"),
    "experimental is a string": (_cfg(lambda c: c.update(experimental="x")), "experimental is str"),
    "version as a string": (_cfg(lambda c: c.update(version="5")), "version '5' is not an integer"),
    "version 7 (v2)": (_cfg(lambda c: c.update(version=7)), "v2 models"),
    "zero heads": (_cfg(lambda c: c["size"].update(heads=0)), "size.heads is 0"),
    "negative dim": (_cfg(lambda c: c["size"].update(dim=-64)), "size.dim is -64"),
    "huge dim": (_cfg(lambda c: c["size"].update(dim=2 ** 40)), "size.dim is 1099511627776, outside"),
    "float layers": (_cfg(lambda c: c["size"].update(layers=2.5)), "size.layers is 2.5, not an integer"),
    "string dim": (_cfg(lambda c: c["size"].update(dim="64")), "size.dim is '64', not an integer"),
    "bool layers": (_cfg(lambda c: c["size"].update(layers=True)), "not an integer"),
    "zero audio tokens": (_cfg(lambda c: c["size"].update(audio_tokens=0)), "size.audio_tokens is 0"),
    "negative langs": (_cfg(lambda c: c.update(langs=-1)), "langs is -1"),
    "dim not divisible": (_cfg(lambda c: c["size"].update(dim=66)), "not divisible by size.heads"),
    "capabilities a string": (_cfg(lambda c: c.update(capabilities="ar")), "capabilities 'ar' is not a list"),
    "moe": (_cfg(lambda c: c.update(experts=8)), "mixture of experts"),
    "null max positions": (_cfg(lambda c: c["experimental"].update(max_position_embeddings=None)),
                           "max_position_embeddings is None"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_errors(tmp_path, ckpt, case):
    make, needle = CONFIG_CASES[case]
    bad = rewrite(ckpt, tmp_path / "bad", config=make(demo_config(ckpt)))
    refused([tmp_path, ckpt], "convert", bad, tmp_path / "out", "-q", needles=("fp32.sft", needle))


def test_shape_disagrees_with_config(tmp_path, ckpt):
    t = load_file(str(ckpt / "fp32.sft"))
    t["model.layers.1.mlp.up_proj.weight"] = torch.zeros(100, 64)
    del t["classifiers.proj.3.bias"]
    t["extra.weight"] = torch.zeros(2)
    bad = rewrite(ckpt, tmp_path / "bad", tensors=t)
    refused([tmp_path], "convert", bad, tmp_path / "o", "-q",
            needles=("missing 1 tensor(s): classifiers.proj.3.bias", "unexpected 1 tensor(s): extra.weight",
                     "model.layers.1.mlp.up_proj.weight (100, 64) (expected (256, 64))"))


# --- .pth files --------------------------------------------------------------------------------------------

def test_pth_checkpoint_loads(tmp_path, ckpt):
    from reference_model.load import load_reference

    pth = tmp_path / "ok" / "fp32.pth"
    pth.parent.mkdir()
    torch.save({"module": load_file(str(ckpt / "fp32.sft")), "config": demo_config(ckpt)}, pth)
    a, b = load_reference(ckpt), load_reference(pth)
    assert torch.equal(a.llama.lm_head.weight, b.llama.lm_head.weight)


PTH_CASES = {
    "text file": (lambda p, c: p.write_text("hello, this is not a checkpoint\n"), "cannot load as a weights-only"),
    "JSON text": (lambda p, c: p.write_text('{"module": {}, "config": {}}'), "cannot load as a weights-only"),
    "empty file": (lambda p, c: p.write_bytes(b""), "cannot load as a weights-only"),
    "garbage": (lambda p, c: p.write_bytes(b"garbage" * 10), "cannot load as a weights-only"),
    "broken zip": (lambda p, c: p.write_bytes(b"PK\x03\x04" + b"\x00" * 64), "cannot load as a weights-only"),
    "a list": (lambda p, c: torch.save([1, 2], p), "no 'module'"),
    "no module": (lambda p, c: torch.save({"weights": {}}, p), "no 'module'"),
    "no config": (lambda p, c: torch.save({"module": {}}, p), "has no 'config'"),
    "module of ints": (lambda p, c: torch.save({"module": {"a": 1}, "config": c}, p), "not a state dict of tensors"),
    "config not JSON": (lambda p, c: torch.save({"module": {}, "config": "{x"}, p), "config is not valid JSON"),
    "config a list": (lambda p, c: torch.save({"module": {}, "config": [1]}, p), "config is not a JSON object"),
}


@pytest.mark.parametrize("case", sorted(PTH_CASES))
def test_bad_pth(tmp_path, ckpt, case):
    make, needle = PTH_CASES[case]
    make(tmp_path / "bad.pth", demo_config(ckpt))
    refused([tmp_path], "convert", tmp_path / "bad.pth", tmp_path / "out", "-q", needles=("bad.pth", needle))


# --- uniform folders ---------------------------------------------------------------------------------------

def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


UNIFORM_CASES = {
    "layout not JSON": ("valle_layout.json", lambda p: p.write_text("{oops"), "layout is not valid JSON"),
    "layout binary": ("valle_layout.json", lambda p: p.write_bytes(b"\xff\xfe\xfa"), "layout is not valid JSON"),
    "layout a list": ("valle_layout.json", lambda p: p.write_text("[]"), "layout is not a JSON object"),
    "layout negative vocab": ("valle_layout.json",
                              lambda p: p.write_text(p.read_text().replace('"vocab_size": ', '"vocab_size": -')),
                              "vocab_size -"),
    "layout rows outside vocab": ("valle_layout.json",
                                  lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "vocab_size": 100})),
                                  "outside the vocabulary of 100"),
    "source config zero heads": ("valle_source_config.json",
                                 lambda p: p.write_text(p.read_text().replace('"heads": 4', '"heads": 0')),
                                 "size.heads is 0"),
    "source config binary": ("valle_source_config.json", lambda p: p.write_bytes(b"\x80\x81"),
                             "config is not valid JSON"),
    "weights truncated": ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:1000]),
                          "cannot load the uniform weights"),
}


@pytest.mark.parametrize("case", sorted(UNIFORM_CASES))
def test_bad_uniform_folder(tmp_path, uniform, case):
    name, mutate, needle = UNIFORM_CASES[case]
    bad = _copy(uniform, tmp_path / "ucopy")
    mutate(bad / name)
    refused([tmp_path], "convert", bad, tmp_path / "out", "-q", needles=("ucopy", needle))


# --- non-finite weights ------------------------------------------------------------------------------------

NON_FINITE = [("model.layers.1.mlp.down_proj.weight", math.nan), ("classifiers.proj.0.bias", math.inf),
              ("text_emb.weight", -math.inf), ("model.norm.weight", math.nan)]


@pytest.mark.parametrize("command", ["convert", "onnx", "gguf"])
@pytest.mark.parametrize("tensor, value", NON_FINITE)
def test_non_finite_weights_refused_at_load(tmp_path, ckpt, command, tensor, value):
    t = load_file(str(ckpt / "fp32.sft"))
    t[tensor].view(-1)[3] = value
    bad = rewrite(ckpt, tmp_path / "bad", tensors=t)
    out = ["-o", tmp_path / "out.gguf"] if command == "gguf" else [tmp_path / "out"]
    refused([tmp_path], command, bad, *out, "-q", needles=("fp32.sft", f"tensor {tensor} has NaN or infinite"))


def test_non_finite_uniform_weights_refused(tmp_path, uniform):
    from safetensors.torch import load_file as load, save_file as save

    bad = _copy(uniform, tmp_path / "ucopy")
    t = load(str(bad / "model.safetensors"))
    t["model.layers.0.mlp.up_proj.weight"][0, 0] = math.nan
    save(t, str(bad / "model.safetensors"), metadata={"format": "pt"})
    refused([tmp_path], "onnx", bad, tmp_path / "out", "-q",
            needles=("ucopy", "model.layers.0.mlp.up_proj.weight has NaN or infinite"))


def test_non_finite_codec_weights_refused(tmp_path):
    from reference_model.codec import hf_state_to_original, random_codec

    state = hf_state_to_original(random_codec(0))
    state["decoder.model.0.conv.conv.bias"][1] = math.nan
    torch.save(state, tmp_path / "codec.th")
    refused([tmp_path], "encodec-cpp", tmp_path / "codec.th", "-o", tmp_path / "out.bin", "-q",
            needles=("codec.th", "has NaN or infinite"))


@pytest.mark.parametrize("errors", [{"causal": math.nan}, {"causal": 1e-7, "bidirectional": math.nan},
                                    {"causal": math.nan, "cached steps": 1e-7}])
def test_verification_fails_on_nan(errors):
    """A NaN error must fail verification (`nan > bound` is false: the old check passed it)."""
    from converters.verify import VerifyReport

    report = VerifyReport("fp32", errors)
    assert math.isnan(report.worst) and not report.ok
    assert VerifyReport("fp32", {k: 1e-7 for k in errors}).ok  # the same report without NaN passes


# --- OS errors while writing -------------------------------------------------------------------------------

def test_os_error_while_writing_is_one_line(tmp_path, ckpt):
    """A real write failure (a 1 MiB file-size limit in a child process): one line naming the output, exit
    code 2, and no temp folder left behind."""
    from .bad_input_checks import check_one_line, run_child, tree_state

    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
            "from valle_export.cli import main\n"
            "main(sys.argv[1:], prog_name='valle-export')\n")
    before = tree_state(tmp_path, ckpt)
    r = run_child(code, "convert", ckpt, tmp_path / "out", "-q")
    check_one_line(r.returncode, r.stdout, r.stderr, True, str(tmp_path / "out"), "cannot write (File too large)")
    assert tree_state(tmp_path, ckpt) == before
