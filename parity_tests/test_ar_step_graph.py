"""The ONNX AR step graph (in-place KV cache) and variant pairs (issue 22):
- the fp32 step graph is exact: every cached step's logits within contracts.LOGITS_REL_EXACT of the torch
  reference, greedy tokens identical to stepping on the backbone, through buffer regrowth, guidance (two
  caches swapped), and a multi-position extend after steps;
- its graph is what it claims: one GroupQueryAttention per layer and no Concat (nothing copies the cache);
- `fast` / STEP+BACKBONE pairs open the two graphs they name, are labelled approximate naming both, refuse a
  missing graph or an unknown word in one line, and synthesize from the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from reference_model.backend import TorchBackend
from reference_model.load import load_reference
from runtimes.onnx_backend import OnnxBackend, SessionConfig
from runtimes.onnx_step import StepCache
from runtimes.pipeline import Guidance, generate_ar
from valle_export import contracts, graphs, names, sequence as seq
from valle_export.cli import main
from valle_export.errors import BadInput

from .backend_checks import assert_cached_steps_close
from .conftest import DEMO_VARIANTS, random_conditioning


@pytest.fixture(scope="module")
def folder(onnx_export):
    return onnx_export(DEMO_VARIANTS[0])


def _backbone_only(folder):
    """The same folder stepping on the backbone (as exports made before the step graph do)."""
    backend = OnnxBackend(folder, SessionConfig(provider="cpu"))
    backend.step_runner = None
    return backend


def test_step_graph_structure(folder):
    import onnx

    ops = [n.op_type for n in onnx.load(str(folder / graphs.STEP_FILE)).graph.node]
    layers = OnnxBackend(folder, SessionConfig(provider="cpu")).n_layers
    assert ops.count("GroupQueryAttention") == layers and "Concat" not in ops, sorted(set(ops))
    assert ops.count("MatMul") == 4 * layers, f"{ops.count('MatMul')} MatMuls (q/k/v and gate/up fused: 4 per layer)"


def test_fp32_steps_match_the_reference(folder, demo_checkpoint):
    backend = OnnxBackend(folder, SessionConfig(provider="cpu"))
    assert backend.step_runner is not None and backend.exact
    ref = TorchBackend(load_reference(demo_checkpoint(*DEMO_VARIANTS[0])))
    assert_cached_steps_close(backend, ref, random_conditioning(1), 1, 40, contracts.LOGITS_REL_EXACT,
                              "ONNX step graph vs torch, cached AR steps")
    assert isinstance(backend._past, StepCache) and backend._past.length == backend._cached


@pytest.mark.parametrize("guidance", [0.0, 3.0], ids=["plain", "guided"])
def test_greedy_tokens_identical_to_backbone_steps(folder, guidance):
    cond = random_conditioning(2)
    got = generate_ar(OnnxBackend(folder, SessionConfig(provider="cpu")), cond, 120, guidance=Guidance(guidance))
    want = generate_ar(_backbone_only(folder), cond, 120, guidance=Guidance(guidance))
    assert len(got) == len(want) > 0 and (got == want).all(), \
        f"{int((got[:len(want)] != want[:len(got)]).sum())} tokens differ, lengths {len(got)} / {len(want)}"


def test_regrowth_and_multi_position_extend(folder):
    """Capacity 1 forces a regrowth on every step; 3 positions at once go through the backbone, then the next
    step back on the step graph."""
    backend, plain = OnnxBackend(folder, SessionConfig(provider="cpu")), _backbone_only(folder)
    cond = random_conditioning(3)
    codes = [int(c) for c in np.random.default_rng(3).integers(0, 1024, 12)]
    spec = seq.ar_pass(backend.layout, cond.phn, cond.lang, cond.prompt, [])
    got, want = [backend.prefill(spec)], [plain.prefill(spec)]
    backend._past = StepCache.from_past(backend._past, reserve=1)
    for step in [codes[i:i + 1] for i in range(8)] + [codes[8:11], codes[11:12]]:  # steps, 3 at once, a step
        spec = seq.extend(backend.layout, spec, names.HEAD_AR, step)
        got.append(backend.extend(spec))
        want.append(plain.extend(spec))
    assert isinstance(backend._past, StepCache) and backend._past.length == spec.length
    err = contracts.rel_error(np.stack(got), np.stack(want))
    assert contracts.within(err, contracts.CACHE_VS_RECOMPUTE_REL), f"regrown / mixed steps vs backbone: {err:.2e}"


# --- pairs ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fast_folder(tmp_path_factory, demo_checkpoint):
    ckpt = demo_checkpoint(*DEMO_VARIANTS[0])
    out = tmp_path_factory.mktemp("fast") / "model"
    r = CliRunner().invoke(main, ["onnx", str(ckpt), "-o", str(out), "--outtype", "fast", "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["encodec", str(out), "-q"])
    assert r.exit_code == 0, r.output
    return out


def test_fast_export_writes_the_pair(fast_folder):
    for name in (graphs.step_file("q4_128"), graphs.backbone_file("w8a8")):
        assert (fast_folder / name).is_file(), name
    assert not (fast_folder / graphs.BACKBONE_FILE).exists(), "fast writes only the two graphs it runs"
    backend = OnnxBackend(fast_folder, SessionConfig(provider="cpu", variant="fast"))
    assert (backend.step_variant, backend.variant) == ("q4_128", "w8a8")
    assert not backend.exact and "w8a8 backbone" in backend.approximation and "q4_128 AR steps" in backend.approximation


def test_auto_picks_fast_in_a_fast_folder(fast_folder):
    from runtimes.synthesize import pick_variant

    assert pick_variant(fast_folder, "auto") == "fast"


def test_pair_refusals(fast_folder):
    with pytest.raises(BadInput, match=r"no ar_step\.q8_0\.onnx \(exported graphs here: backbone\.w8a8\.onnx"):
        OnnxBackend(fast_folder, SessionConfig(provider="cpu", variant="q8_0+w8a8"))
    with pytest.raises(BadInput, match="ONNX variant 'q3' is not one of"):
        OnnxBackend(fast_folder, SessionConfig(provider="cpu", variant="q4_128+q3"))
    r = CliRunner().invoke(main, ["synthesize", str(fast_folder), "--phonemes", "a", "--out", "x.wav",
                                  "--variant", "nope", "-q"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "'nope'" in r.output, r.output


def test_fast_synthesizes(fast_folder, tmp_path):
    r = CliRunner().invoke(main, ["synthesize", str(fast_folder), "--variant", "fast", "--phonemes", "həlˈoʊ",
                                  "--out", str(tmp_path / "a.wav"), "--json", "-q", "--max-duration", "1",
                                  "--modality", "ar+nar"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["frames"] > 0 and not summary["exact"] and "q4_128" in summary["approximation"], summary
    assert (tmp_path / "a.wav").stat().st_size > 44


def test_foreign_or_wrong_step_graph_is_refused(folder, onnx_export, tmp_path):
    """A step graph copied in from another model's export, or a backbone renamed into its place, is refused
    in one line naming the file (the folder's layout and weights fingerprint are checked as for a backbone)."""
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    shutil.copyfile(onnx_export(DEMO_VARIANTS[1]) / graphs.STEP_FILE, mixed / graphs.STEP_FILE)
    with pytest.raises(BadInput, match=r"ar_step\.onnx: .*comes from another model"):
        OnnxBackend(mixed, SessionConfig(provider="cpu"))
    shutil.copyfile(folder / graphs.BACKBONE_FILE, mixed / graphs.STEP_FILE)
    for data in folder.glob("backbone.onnx.data"):
        shutil.copyfile(data, mixed / data.name)
    with pytest.raises(BadInput, match=r"ar_step\.onnx: graph inputs/outputs do not match the AR step spec"):
        OnnxBackend(mixed, SessionConfig(provider="cpu"))
