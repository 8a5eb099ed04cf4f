"""The GGUF files: what stock llama.cpp needs, every valle.* key, types per outtype, CLI and bad input."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from valle_export import names
from valle_export.cli import main

from .conftest import DEMO_VARIANTS
from .test_bad_inputs import assert_one_line_error

# gguf is a core dependency: the writing tests never skip. Loading in llama.cpp and the K-quants (made by
# llama.cpp's quantizer) need llama-cpp-python, part of the test extra.
OUTTYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"]


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_every_outtype_reads_back_and_loads_in_llama_cpp(outtype, gguf_export):
    import gguf

    from runtimes.gguf_file import GgufModelFile
    from runtimes.llama_backend import LlamaConfig, LlamaCppBackend

    path = gguf_export(outtype=outtype)
    reader = gguf.GGUFReader(str(path))
    assert len(reader.tensors) == 2 + 9 * 2  # token_embd, output_norm, 9 per layer: nothing extra
    assert reader.get_field("tokenizer.ggml.model").contents() == "none"
    f = GgufModelFile.open(path)
    assert f.arch == "gemma" and f.head_row_start == 17702
    assert f.tensor_shapes["token_embd.weight"] == (17702 + 9484, 64)
    assert reader.get_field("gemma.vocab_size").contents() == 17702 + 9484
    types = set(f.tensor_types.values())
    if outtype not in ("f32", "f16", "bf16"):
        assert f.tensor_types["token_embd.weight"] == "F16", "input and head rows are kept f16"
        assert types - {"F16", "F32"}, f"{outtype}: nothing was quantized ({types})"
    backend = LlamaCppBackend(path, LlamaConfig(n_ctx=256))  # stock llama.cpp loads it (no decode here)
    assert backend.n_embd == 64
    assert_labels_match_storage(f, backend, outtype)


def assert_labels_match_storage(f, llama_backend, outtype: str) -> None:
    """A quantized or f16 file is never exact: not in the file, not on either GGUF backend."""
    from runtimes.ggml_backend import GgmlBackend

    ggml_backend = GgmlBackend(f.path)
    labels = {"file": {k: v.status for k, v in f.exactness.items()},
              "llamacpp": {k: v.status for k, v in llama_backend.verdicts.items()},
              "ggml": {k: v.status for k, v in ggml_backend.verdicts.items()}}
    if outtype == "f32":
        assert labels["ggml"] == dict.fromkeys(labels["ggml"], "exact") and ggml_backend.exact, labels
    else:
        lossy = {where: [k for k, s in v.items() if s == "exact"] for where, v in labels.items()}
        assert not any(lossy.values()), f"{outtype}: passes labelled exact: {lossy}"
        assert not llama_backend.exact and not ggml_backend.exact
        assert "weights stored as" in ggml_backend.approximation, ggml_backend.approximation
    ggml_backend.close()


def test_valle_keys_carry_everything_a_runtime_needs(gguf_export, demo_checkpoint):
    from reference_model.load import load_reference
    from runtimes.gguf_file import GgufModelFile

    ref = load_reference(demo_checkpoint())
    f = GgufModelFile.open(gguf_export())
    assert f.layout == ref.layout
    assert f.source_config == ref.cfg.raw
    assert f.input_scale == pytest.approx(1 / 8)  # gemma: the host divides by sqrt(64)
    heads, biases = f.head_weights(), f.head_biases()
    for h in ref.layout.heads:
        assert np.array_equal(heads[h.name], ref.llama.lm_head.weight[h.start:h.stop].numpy()), h.name
        assert np.array_equal(biases[h.name], ref.head_bias[h.start:h.stop].numpy()), h.name
    assert np.array_equal(f.input_table(), ref.table.numpy())
    assert {v.status for v in f.exactness.values()} == {"approximate"}, f.exactness  # GELU: every pass runs


@pytest.mark.parametrize("variant, arch, expect", [
    (DEMO_VARIANTS[2], None, "qwen2vl"),  # silu segmented
    (DEMO_VARIANTS[3], "llama", "llama"),  # silu unified
    (DEMO_VARIANTS[1], None, "gemma"),  # gelu unified
])
def test_arch_choice(variant, arch, expect, gguf_export):
    import gguf

    from runtimes.gguf_file import GgufModelFile

    path = gguf_export(variant, arch=arch)
    f = GgufModelFile.open(path)
    assert f.arch == expect
    if expect == "qwen2vl":
        reader = gguf.GGUFReader(str(path))
        assert list(reader.get_field("qwen2vl.rope.dimension_sections").contents()) == [0, 8, 0, 0]
        assert all(v.exact for v in f.exactness.values()), f.exactness
    assert f.qk_layout == ("interleaved" if expect == "llama" else "neox")


def test_tokenizer_travels_in_the_file(tmp_path, demo_checkpoint):
    import shutil

    from runtimes.gguf_file import GgufModelFile

    ckpt = tmp_path / "ckpt"
    shutil.copytree(demo_checkpoint(), ckpt)
    (ckpt / names.TOKENIZER_FILE).write_text('{"model": {"vocab": {}}}')
    r = CliRunner().invoke(main, ["gguf", str(ckpt), "--outtype", "f32", "-q"])
    assert r.exit_code == 0, r.output
    out = ckpt / "ckpt.f32.gguf"
    assert json.loads(GgufModelFile.open(out).tokenizer) == {"model": {"vocab": {}}}


def test_bad_gguf_requests(tmp_path, demo_checkpoint):
    runner = CliRunner()
    out = tmp_path / "x.gguf"
    assert_one_line_error(runner.invoke(main, ["gguf", str(demo_checkpoint()), "-o", str(out), "--arch", "qwen2vl"]),
                          "GELU model can only be written as arch gemma")
    silu = demo_checkpoint(*DEMO_VARIANTS[2])
    assert_one_line_error(runner.invoke(main, ["gguf", str(silu), "-o", str(out), "--arch", "gemma"]),
                          "this model uses SiLU")
    assert not out.exists() and not list(tmp_path.glob(".x.gguf*"))


def test_corrupt_gguf_is_one_line(tmp_path):
    from runtimes.gguf_file import GgufModelFile
    from valle_export.errors import BadInput

    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x00" * 10)
    with pytest.raises(BadInput, match="bad.gguf"):
        GgufModelFile.open(tmp_path / "bad.gguf")
    (tmp_path / "other.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(BadInput, match="not a readable GGUF"):
        GgufModelFile.open(tmp_path / "other.gguf")
