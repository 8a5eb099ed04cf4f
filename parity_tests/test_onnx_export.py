"""The ONNX files themselves: checker, interface, metadata, external data, CLI, bad input."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from valle_export import graphs, names
from valle_export.cli import main

from .test_bad_inputs import assert_one_line_error


def test_graph_interface_and_metadata(onnx_export):
    folder = onnx_export()
    model = onnx.load(str(folder / graphs.BACKBONE_FILE))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    layout = json.loads(meta[graphs.META_LAYOUT])
    assert layout == json.loads((folder / names.LAYOUT_FILE).read_text())
    assert json.loads(meta[graphs.META_SOURCE_CONFIG])["size"]["layers"] == 2
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["inputs_embeds"] == ["batch", "sequence", 64]
    assert dims["attention_mask"] == ["batch", 1, "sequence", "total_sequence"]
    assert dims["past_key_values.1.value"] == ["batch", 4, "past_sequence", 16]
    ops = {n.op_type for n in model.graph.node}
    assert {"Attention", "RotaryEmbedding", "RMSNormalization", "Gelu"} <= ops


def test_batch_of_two_sequences(onnx_export):
    """Dynamic batch: two different sequences in one run give each one's single-run result."""
    import onnxruntime as ort

    from valle_export import sequence as seq

    folder = onnx_export()
    sess = ort.InferenceSession(str(folder / graphs.BACKBONE_FILE), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 64)).astype(np.float32)
    pos = np.stack([np.arange(7), np.arange(7)[::-1] % 3])
    mask = np.repeat(seq.additive_mask(True, 7), 2, axis=0)
    past = {i.name: np.zeros((2, 4, 0, 16), np.float32) for i in sess.get_inputs() if i.name.startswith("past")}
    both = sess.run(["last_hidden_state"], {"inputs_embeds": x, "attention_mask": mask, "position_ids": pos, **past})[0]
    for b in range(2):
        one = sess.run(["last_hidden_state"], {"inputs_embeds": x[b:b + 1], "attention_mask": mask[:1],
                                               "position_ids": pos[b:b + 1],
                                               **{k: v[:1] for k, v in past.items()}})[0]
        assert np.abs(one[0] - both[b]).max() < 1e-5


def test_external_data_when_large(tmp_path, demo_checkpoint, monkeypatch):
    import converters.onnx_export as ox
    from reference_model.load import load_reference
    from runtimes.onnx_backend import OnnxBackend, SessionConfig

    monkeypatch.setattr(ox, "EXTERNAL_DATA_BYTES", 0)
    ox.export_onnx(load_reference(demo_checkpoint()), tmp_path / "o")
    data = (tmp_path / "o" / "backbone.onnx.data").stat().st_size
    graph = (tmp_path / "o" / "backbone.onnx").stat().st_size
    assert data > 400_000 and graph < data / 3, f"graph {graph} bytes, external data {data} bytes"
    OnnxBackend(tmp_path / "o", SessionConfig(provider="cpu"))  # loads with its external data


def test_cli_export_and_check_fixture_backend_onnx(tmp_path, demo_checkpoint):
    from .conftest import fixture_dirs

    r = CliRunner().invoke(main, ["onnx", str(demo_checkpoint()), str(tmp_path / "o"), "--quantize", "int8"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "backbone.int8.onnx").is_file() and "int8 hidden-state relative error" in r.output
    fx = fixture_dirs()[0]
    r = CliRunner().invoke(main, ["check-fixture", str(fx), "--backend", "onnx"])
    assert r.exit_code == 0 and "onnx: 22/22 cases meet the backend's contract (22 exact)" in r.output, r.output
    assert "_nolora" not in r.output  # fixture_dirs()[0] is a fixture without an adapter


def test_bad_onnx_inputs(tmp_path, demo_checkpoint, onnx_export):
    from runtimes.onnx_backend import OnnxBackend, SessionConfig

    runner = CliRunner()
    assert_one_line_error(runner.invoke(main, ["onnx", str(demo_checkpoint()), str(tmp_path / "o"), "--dtype", "fp16",
                                               "--quantize", "int8"]), "do not combine")
    assert_one_line_error(runner.invoke(main, ["onnx", str(demo_checkpoint()), str(tmp_path / "o"), "--opset", "12"]),
                          "--opset", "18<=x<=23")
    assert not (tmp_path / "o").exists()
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(onnx_export(), bad)
    (bad / "backbone.onnx").write_bytes(b"garbage")
    from valle_export.errors import BadInput

    with pytest.raises(BadInput, match="onnxruntime cannot load the graph"):
        OnnxBackend(bad, SessionConfig(provider="cpu"))
    with pytest.raises(BadInput, match="ONNX variant 'fp8' is not one of"):
        OnnxBackend(onnx_export(), SessionConfig(provider="cpu", variant="fp8"))
    lean = tmp_path / "lean"  # the shared export may hold other tests' variants: a copy without q4_128
    shutil.copytree(onnx_export(), lean)
    (lean / "backbone.q4_128.onnx").unlink(missing_ok=True)
    with pytest.raises(BadInput, match=r"no backbone\.q4_128\.onnx"):  # a known variant this folder lacks
        OnnxBackend(lean, SessionConfig(provider="cpu", variant="q4_128"))
    with pytest.raises(BadInput, match="not available"):
        OnnxBackend(onnx_export(), SessionConfig(provider="tensorrt"))
