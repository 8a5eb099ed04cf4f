"""Sequence assembly in the torch-free core: positions, masks, extension."""
import numpy as np

from valle_export import sequence as seq
from valle_export.config import parse_config
from valle_export.layout import layout_from_config
from valle_export.demo_config import DemoSpec, demo_config


def layout(positions="segmented", masks=True):
    return layout_from_config(parse_config(demo_config(DemoSpec(positions=positions, noncausal_masks=masks))))


PHN = np.array([1, 5, 6, 7, 2])
PROMPT = np.arange(24).reshape(3, 8)


def test_segmented_positions_restart_with_sep_taking_next_index():
    spec = seq.ar_pass(layout(), PHN, 0, PROMPT, [4, 5])
    # phn(5)+sep, lang+sep, rvq+sep, prompt(3)+sep, resp(2)
    assert spec.positions.tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 0, 1, 0, 1, 2, 3, 0, 1]
    assert spec.out_start == spec.length - 3  # the prompt's sep predicts the first code


def test_unified_positions():
    spec = seq.ar_pass(layout("unified"), PHN, 0, PROMPT, [4])
    assert spec.positions.tolist() == list(range(spec.length))


def test_extend_equals_fresh_build():
    for mode in ("segmented", "unified"):
        lay = layout(mode)
        grown = seq.extend(lay, seq.extend(lay, seq.ar_pass(lay, PHN, 1, PROMPT, []), "AR:0:0", [7]), "AR:0:0", [9])
        fresh = seq.ar_pass(lay, PHN, 1, PROMPT, [7, 9])
        assert np.array_equal(grown.rows, fresh.rows) and np.array_equal(grown.positions, fresh.positions)


def test_nar_rows_sum_lower_levels_through_nar_tables():
    lay = layout()
    resp = np.array([[3, 4, 5], [6, 7, 8]])
    spec = seq.nar_pass(lay, PHN, 0, PROMPT, resp, 2)
    out = spec.rows[spec.out_start:]
    t1, t2 = lay.table("NAR:0:1").start, lay.table("NAR:1:2").start
    assert out.tolist() == [[t1 + 3, t2 + 4], [t1 + 6, t2 + 7]]
    assert not spec.causal


def test_masks():
    assert seq.attention_allowed(True, 3).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert seq.attention_allowed(True, 1, past=2).tolist() == [[1, 1, 1]]
    assert seq.attention_allowed(False, 2).all()
    m = seq.additive_mask(True, 2)
    assert m.shape == (1, 1, 2, 2) and m[0, 0, 0, 1] == -np.inf and m[0, 0, 1, 0] == 0


def test_token_out_of_range_is_a_clear_error():
    import pytest
    from valle_export.errors import BadInput

    with pytest.raises(BadInput, match="out of range for table 'text'"):
        seq.ar_pass(layout(), [1, 300], 0, PROMPT, [])
