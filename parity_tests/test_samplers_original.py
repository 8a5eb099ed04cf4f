"""The sampler chain against numbers worked out by hand from the original's formulas (vall_e/samplers.py and
vall_e/models/base.py `sample`, design.md section 1): fixed logits in, exact values out."""
from __future__ import annotations

import math

import numpy as np
import pytest

from runtimes.pipeline import cfg_logits
from runtimes.samplers import (SamplerSettings, dry_penalize, length_penalize, min_p_filter, process,
                               repetition_penalize, sample, top_k_top_p_filter, top_n_sigma)

NEG = -np.inf


def close(got, want, label):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{label}: shape {got.shape} != {want.shape}"
    same_inf = np.array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    err = np.abs(got[finite] - want[finite]).max() if finite.any() else 0.0
    assert same_inf and err < 1e-6, f"{label}: got {got.tolist()}, want {want.tolist()} (max err {err:.2e})"


def test_repetition_penalty_divides_per_occurrence_with_decay():
    row = np.array([[2.0, -1.0, 0.5, 3.0]], np.float32)
    close(repetition_penalize(row.copy(), np.array([0, 3, 0]), 2.0), [[0.5, -1.0, 0.5, 1.5]], "decay 0")
    # decay 1: distance 3, 2, 1 -> divide by 2*3, 2*2, 2*1
    close(repetition_penalize(row.copy(), np.array([0, 3, 0]), 2.0, 1.0), [[1 / 6, -1.0, 0.5, 0.75]], "decay 1")


def test_repetition_penalty_quirk_one_ar_token_and_nar_rows():
    row = np.array([[2.0, 4.0]], np.float32)
    close(repetition_penalize(row.copy(), np.array([1]), 2.0), row, "AR step after exactly one code (the quirk)")
    rows = np.full((3, 4), 8.0, np.float32)
    want = rows.copy()
    want[1:, 1] /= 2  # token 1 at frame 0 penalizes frames 1, 2
    want[2:, 2] /= 2  # token 2 at frame 1 penalizes frame 2; token 1 at frame 2 penalizes nothing
    close(repetition_penalize(rows.copy(), np.array([1, 2, 1]), 2.0), want, "NAR: later frames only")
    masked = repetition_penalize(rows.copy(), np.array([1024, 1024, 1]), 2.0)
    close(masked, rows, "mask token 1024 skipped (the original raises IndexError there)")


def test_length_penalty_divides_by_length_plus_one():
    row = np.array([[1.0, 1.0, 2.0]], np.float32)
    close(length_penalize(row.copy(), 3 + 1, 1.0, 2), [[1.0, 1.0, 0.5]], "3 codes so far, factor 1")
    got = process(row, SamplerSettings(temperature=0, length_penalty=2.0), np.array([7, 7, 7]), stop_token=2)
    close(got, [[1.0, 1.0, 2.0 / 16]], "chain: (3 + 1) ** 2")


def test_min_p_keeps_at_least_32():
    row = np.arange(40, dtype=np.float32)[None]
    got = min_p_filter(row, 0.5)
    kept = np.flatnonzero(np.isfinite(got[0]))
    assert kept.tolist() == list(range(8, 40)), f"kept {kept.tolist()} (want the 32 best, 8..39)"
    small = np.array([[0.0, 5.0, 1.0]], np.float32)
    close(min_p_filter(small, 0.9), small, "fewer than 32 tokens: min-p removes none")


def test_top_k_keeps_ties_and_top_p_keeps_the_token_that_crosses():
    close(top_k_top_p_filter(np.array([[1.0, 3.0, 2.0, 3.0]], np.float32), top_k=2), [[NEG, 3, NEG, 3]], "top-k ties")
    logp = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    close(top_k_top_p_filter(logp, top_p=0.7), [[logp[0, 0], logp[0, 1], NEG, NEG]], "top-p 0.7: 0.5 + 0.3")
    close(top_k_top_p_filter(logp, top_p=0.55), [[logp[0, 0], logp[0, 1], NEG, NEG]], "top-p 0.55")
    close(top_k_top_p_filter(logp, top_p=0.4), [[logp[0, 0], NEG, NEG, NEG]], "top-p 0.4")


def test_order_filters_before_temperature():
    """top-p at T=2 filters on the T=1 probabilities, then divides (valle-export used to do the reverse)."""
    logp = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    got = process(logp, SamplerSettings(temperature=2.0, top_p=0.7))
    close(got, [[logp[0, 0] / 2, logp[0, 1] / 2, NEG, NEG]], "top-p then /T")


def test_top_n_sigma_uses_n_1_and_finite_entries():
    row = np.array([[0.0, 1.0, 2.0, 3.0, 10.0]], np.float32)
    std = math.sqrt(62.8 / 4)  # unbiased: mean 3.2, squared deviations sum to 62.8
    assert 10 - std > 3, std
    want = [[NEG, NEG, NEG, NEG, 10.0]]
    close(top_n_sigma(row), want, "n = 1")
    close(process(row, SamplerSettings(temperature=0, top_no=5.0)), want, "--top-no 5 still means n = 1")
    after_top_k = process(row, SamplerSettings(temperature=0, top_k=4, top_no=1.0))
    close(after_top_k, want, "after top-k: std over [1, 2, 3, 10] (4.08), never NaN")


def test_dry_as_written_in_the_original():
    prev = np.array([1, 2, 1, 2, 1])
    # token 1 repeats the tail for 5 tokens: 1 * 2 ** (5 - 2) = 8; token 2 (run 1) ends the loop
    close(dry_penalize(np.zeros((1, 4), np.float32), prev, 1.0, 2.0, 2), [[0, -8, 0, 0]], "DRY runs")
    # the first-seen token has a run of 1: the original's loop `break`s there and penalizes nothing
    close(dry_penalize(np.zeros((1, 8), np.float32), np.array([5, 6, 7, 5, 6]), 1.0, 2.0, 2), np.zeros((1, 8)),
          "DRY stops at the first short run")
    got = process(np.zeros((1, 4), np.float32), SamplerSettings(temperature=0.5, dry_multiplier=1.0, dry_base=2.0),
                  prev)
    close(got, [[0, -8, 0, 0]], "DRY after temperature (not divided by T)")


def test_cfg_formula_with_and_without_rescale():
    cond = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    null = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
    close(cfg_logits(cond, null, 2.0, 0.0), [[2, 4], [5, 7]], "strength 2")
    factor = 0.5 * (math.sqrt(5 / 3) / math.sqrt(13 / 3)) + 0.5  # std over the whole block, unbiased
    close(cfg_logits(cond, null, 2.0, 0.5), np.array([[2, 4], [5, 7]]) * factor, "rescale 0.5")


def test_greedy_and_seeded_draws():
    row = np.log(np.array([0.1, 0.6, 0.3], np.float32))
    assert int(sample(row, SamplerSettings(temperature=0))) == 1
    draws = [int(sample(row, SamplerSettings(temperature=1.0), np.random.default_rng(s))) for s in range(400)]
    share = draws.count(1) / len(draws)
    assert 0.53 < share < 0.67, f"token 1 drawn {share:.3f} of the time, want about 0.6"
    with pytest.raises(ValueError):
        sample(row, SamplerSettings(temperature=1.0))
