"""The torch reference vs the ORIGINAL implementation's recorded tensors (every fixture, every case file, every
case; a fixture with an adapter gets it merged for the files recorded with it)."""
import re

import pytest
from click.testing import CliRunner

from valle_export.cli import main
from valle_export import sequence as seq

from .compare import assert_logits_close, assert_tokens_equal
from .conftest import LORA_FILE, fixture_dirs, fixture_lora
from .tolerances import LOGITS_REL_FP32

FIXTURES = fixture_dirs()


def test_fixtures_are_present():
    assert FIXTURES, "no golden fixtures found (../shared/fixtures or parity_tests/fixtures)"
    assert any((f / LORA_FILE).is_file() for f in FIXTURES), "no fixture with an adapter (mrq-lora)"


@pytest.fixture(scope="module", params=FIXTURES, ids=lambda p: p.name)
def loaded(request):
    """(folder, backend_for(uses_adapter)) with one torch reference per adapter state."""
    from reference_model.backend import TorchBackend
    from reference_model.load import load_reference

    folder, made = request.param, {}

    def backend_for(adapter: bool):
        if adapter not in made:
            made[adapter] = TorchBackend(load_reference(folder, fixture_lora(folder, adapter)))
        return made[adapter]

    return folder, backend_for


def _fixtures(folder):
    from runtimes.fixture_check import case_files, load_fixture

    return [load_fixture(folder, f) for f in case_files(folder)]


def test_every_case_within_tolerance(loaded):
    from runtimes.fixture_check import check_fixture

    folder, backend_for = loaded
    results = check_fixture(folder, backend_for)
    assert len(results) >= 20
    bad = [r.line() for r in results if not r.ok]
    assert not bad, "\n".join(bad)
    worst = max(r.rel for r in results if r.rel is not None)
    assert worst <= LOGITS_REL_FP32, f"worst pass relative error {worst:.3e}"


def test_inputs_positions_and_masks_exact(loaded):
    """Our assembly reproduces the original's inputs_embeds, position ids and permission matrices (task passes
    with their task row and position quirk, stt with its audio sum included)."""
    from runtimes.fixture_check import _pass_spec

    folder, backend_for = loaded
    checked = 0
    for fx in _fixtures(folder):
        backend = backend_for(fx.uses_adapter)
        for case in sorted(k[:-len(".logits")] for k in fx.tensors if k.endswith(".logits")):
            spec = _pass_spec(fx, backend.layout, case)
            where = f"{fx.file}:{case}"
            embeds = backend.model.embed(spec.rows).numpy()
            assert_logits_close(embeds, fx.tensors[f"{case}.inputs_embeds"], 0.0, f"{where} inputs_embeds")
            assert_tokens_equal(spec.positions, fx.tensors[f"{case}.position_ids"], f"{where} position_ids")
            assert_tokens_equal(seq.attention_allowed(spec.causal, spec.length), fx.tensors[f"{case}.attn_allowed"],
                                f"{where} attention mask")
            assert_tokens_equal(spec.segments, fx.tensors[f"{case}.segments"], f"{where} segments")
            checked += 1
    assert checked >= 12


def test_check_fixture_command_exit_codes(loaded):
    folder, _ = loaded
    result = CliRunner().invoke(main, ["check-fixture", str(folder)])
    assert result.exit_code == 0, result.output
    summary = re.search(r"torch: (\d+)/(\d+) cases meet the backend's contract \((\d+) exact", result.output)
    assert summary and summary[1] == summary[2] and "FAIL" not in result.output, result.output
    if (folder / LORA_FILE).is_file():  # every case file of the folder ran
        for label in ("_nolora:greedy_nar_len.codes", "_tasks:stt.head9", "_tasks_nolora:greedy_sr_nar_len.codes"):
            assert label in result.output, result.output
    else:
        assert "22/22 cases meet the backend's contract (22 exact)" in result.output


def test_check_fixture_fails_on_a_wrong_model(tmp_path, loaded, demo_checkpoint):
    """A different model in the fixture folder must make the command exit 1 (the check can fail)."""
    import shutil

    folder, _ = loaded
    shutil.copy(folder / "cases.safetensors", tmp_path / "cases.safetensors")
    shutil.copy(demo_checkpoint() / "fp32.sft", tmp_path / "fp32.sft")
    result = CliRunner().invoke(main, ["check-fixture", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output


def test_lora_fixture_fails_without_its_adapter(tmp_path):
    """The adapter files need the merge: the same folder without lora.sft fails (so the merge is what passes)."""
    import shutil

    folder = next((f for f in FIXTURES if (f / LORA_FILE).is_file()), None)
    if folder is None:
        pytest.skip("no fixture with an adapter")
    for name in ("cases.safetensors", "fp32.sft"):
        shutil.copy(folder / name, tmp_path / name)
    result = CliRunner().invoke(main, ["check-fixture", str(tmp_path)])
    assert result.exit_code == 1 and "FAIL exact       ar " in result.output, result.output
