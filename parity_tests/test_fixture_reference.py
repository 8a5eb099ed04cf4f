"""The torch reference vs the ORIGINAL implementation's recorded tensors (every fixture, every case)."""
import pytest
from click.testing import CliRunner

from valle_export.cli import main
from valle_export import sequence as seq

from .compare import assert_logits_close, assert_tokens_equal
from .conftest import fixture_dirs
from .tolerances import LOGITS_REL_FP32

FIXTURES = fixture_dirs()


def test_fixtures_are_present():
    assert FIXTURES, "no golden fixtures found (../shared/fixtures or parity_tests/fixtures)"


@pytest.fixture(scope="module", params=FIXTURES, ids=lambda p: p.name)
def loaded(request):
    from reference_model.backend import TorchBackend
    from reference_model.load import load_reference
    from runtimes.fixture_check import load_fixture

    return load_fixture(request.param), TorchBackend(load_reference(request.param))


def test_every_case_within_tolerance(loaded):
    from runtimes.fixture_check import check_greedy_runs, check_pass_cases

    fx, backend = loaded
    results = check_pass_cases(fx, backend) + check_greedy_runs(fx, backend)
    assert len(results) >= 12
    bad = [r.line() for r in results if not r.ok]
    assert not bad, "\n".join(bad)
    worst = max(r.rel for r in results if r.rel is not None)
    assert worst <= LOGITS_REL_FP32, f"worst pass relative error {worst:.3e}"


def test_inputs_positions_and_masks_exact(loaded):
    """Our assembly reproduces the original's inputs_embeds, position ids and permission matrices."""
    from runtimes.fixture_check import _pass_spec

    fx, backend = loaded
    cases = sorted(k[:-len(".logits")] for k in fx.tensors if k.endswith(".logits"))
    for case in cases:
        spec = _pass_spec(fx, backend.layout, case)
        embeds = backend.model.embed(spec.rows).numpy()
        assert_logits_close(embeds, fx.tensors[f"{case}.inputs_embeds"], 0.0, f"{case} inputs_embeds")
        assert_tokens_equal(spec.positions, fx.tensors[f"{case}.position_ids"], f"{case} position_ids")
        assert_tokens_equal(seq.attention_allowed(spec.causal, spec.length), fx.tensors[f"{case}.attn_allowed"],
                            f"{case} attention mask")


def test_each_pass_logits(loaded):
    fx, backend = loaded
    from runtimes.fixture_check import _pass_spec

    for case in sorted(k[:-len(".logits")] for k in fx.tensors if k.endswith(".logits")):
        want = fx.tensors[f"{case}.logits"]
        got = backend.logits(_pass_spec(fx, backend.layout, case))[-want.shape[0]:]
        assert_logits_close(got, want, LOGITS_REL_FP32, f"{case} logits")


def test_check_fixture_command_exit_codes(loaded):
    fx, _ = loaded
    result = CliRunner().invoke(main, ["check-fixture", str(fx.folder)])
    assert result.exit_code == 0, result.output
    assert "20/20 cases meet the backend's contract (20 exact)" in result.output and "FAIL" not in result.output


def test_check_fixture_fails_on_a_wrong_model(tmp_path, loaded, demo_checkpoint):
    """A different model in the fixture folder must make the command exit 1 (the check can fail)."""
    import shutil

    fx, _ = loaded
    shutil.copy(fx.folder / "cases.safetensors", tmp_path / "cases.safetensors")
    shutil.copy(demo_checkpoint() / "fp32.sft", tmp_path / "fp32.sft")
    result = CliRunner().invoke(main, ["check-fixture", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output
