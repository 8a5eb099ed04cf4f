"""One assert helper per kind of comparison; every failure message carries the measured figure."""
from __future__ import annotations

import numpy as np

from valle_export import contracts


def rel_error(got, want) -> tuple[float, float]:
    """(max abs error, relative error) as the product measures them (valle_export.contracts)."""
    return contracts.max_abs_error(got, want), contracts.rel_error(got, want)


def assert_logits_close(got, want, rel_tol: float, label: str) -> float:
    """Shapes equal and max-abs / max|want| <= rel_tol; returns the measured relative error."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{label}: shape {got.shape} != {want.shape}"
    max_abs, rel = rel_error(got, want)
    assert contracts.within(rel, rel_tol), \
        f"{label}: relative error {rel:.3e} (max abs {max_abs:.3e}) exceeds {rel_tol:g}"
    return rel


def assert_tokens_equal(got, want, label: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{label}: shape {got.shape} != {want.shape}"
    diff = np.argwhere(got != want)
    assert not len(diff), (f"{label}: {len(diff)} of {got.size} tokens differ, first at {tuple(diff[0])}: "
                           f"got {got[tuple(diff[0])]} want {want[tuple(diff[0])]}")
