"""The uniform layout: released-model ranges (design section 2), JSON round trip, config parsing."""
import json

import numpy as np
import pytest

from valle_export import names
from valle_export.config import parse_config
from valle_export.errors import BadCheckpoint, UnsupportedModel
from valle_export.layout import Layout, layout_from_config


def released_config(**experimental) -> dict:
    from valle_export.demo_config import DemoSpec, demo_config

    raw = demo_config(DemoSpec(size="full"))
    raw["experimental"].update(experimental)
    return raw


def test_released_ranges_match_design():
    layout = layout_from_config(parse_config(released_config()))
    assert layout.vocab_size == 17702
    expect = {"text": (0, 256), "rvq_level": (256, 264), "lang": (264, 270), "task": (270, 279),
              "len": (279, 290), "tone": (290, 291), "sep": (291, 292), "AR:0:0": (8484, 9509),
              "NAR:0:0": (16677, 17702)}
    for level in range(8):
        expect[names.table_prompt(level)] = (292 + 1024 * level, 292 + 1024 * (level + 1))
    for level in range(1, 8):
        expect[names.resp_name(level, 8)] = (9509 + 1024 * (level - 1), 9509 + 1024 * level)
    got = {t.name: (t.start, t.stop) for t in layout.tables}
    assert got == expect
    heads = {h.name: (h.index, h.start, h.rows) for h in layout.heads}
    assert heads["AR:0:0"] == (0, 8484, 1025)
    assert heads["NAR:2:3"] == (3, 9509 + 2048, 1024)
    assert heads["NAR:0:0"] == (8, 16677, 1024)
    assert heads["stt"] == (9, 0, 256)
    assert heads["len"] == (10, 279, 11)
    assert all(h.has_bias for h in layout.heads)


def test_heads_do_not_overlap_and_tables_tile():
    layout = layout_from_config(parse_config(released_config()))
    covered = np.zeros(layout.vocab_size, int)
    for h in layout.heads:
        covered[h.start:h.stop] += 1
    assert covered.max() == 1
    stops = [t.start for t in layout.tables[1:]]
    assert stops == [t.stop for t in layout.tables[:-1]]


def test_layout_json_round_trip():
    layout = layout_from_config(parse_config(released_config(unified_position_ids=True)))
    again = Layout.from_json(layout.to_json())
    assert again == layout
    assert json.loads(layout.to_json())["position_mode"] == "unified"


def test_mask_policy():
    noncausal = layout_from_config(parse_config(released_config(noncausal_masks=True)))
    causal = layout_from_config(parse_config(released_config(noncausal_masks=False)))
    assert noncausal.is_causal("AR:0:0") and noncausal.is_causal("len")
    assert not noncausal.is_causal("NAR:0:1") and not noncausal.is_causal("NAR:0:0")
    assert all(causal.is_causal(h.name) for h in causal.heads)


def test_no_len_capability_has_no_len_head():
    raw = released_config()
    raw["capabilities"] = ["ar", "nar"]
    layout = layout_from_config(parse_config(raw))
    assert "len" not in [h.name for h in layout.heads]
    assert layout.vocab_size == 17702  # the len table exists in every model of the original


def test_missing_flags_get_original_defaults():
    raw = {"version": 5, "size": {"dim": 64, "heads": 4, "layers": 2},
           "experimental": {"split_classifiers": True, "audio_embedding_sums": True}}
    cfg = parse_config(raw)
    assert cfg.unified_position_ids is True and cfg.noncausal_masks is False and cfg.classifiers_bias is True


@pytest.mark.parametrize("change, match", [
    ({"version": 7}, "v2 models"),
    ({"arch_type": "retnet"}, "arch_type"),
    ({"experimental": {"split_classifiers": False, "audio_embedding_sums": True}}, "split_classifiers"),
    ({"experimental": {"split_classifiers": True, "audio_embedding_sums": True, "hidden_act": "relu"}}, "hidden_act"),
])
def test_unsupported_variants_refused_by_name(change, match):
    raw = released_config()
    raw.update(change)
    with pytest.raises(UnsupportedModel, match=match):
        parse_config(raw, "x.sft")


def test_config_missing_size_keys():
    with pytest.raises(BadCheckpoint, match="missing size.layers"):
        parse_config({"size": {"dim": 64, "heads": 4}}, "x.sft")
