"""One assert helper per kind of comparison; every failure message carries the measured figure."""
from __future__ import annotations

import numpy as np


def rel_error(got, want) -> tuple[float, float]:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    max_abs = float(np.abs(got - want).max()) if got.size else 0.0
    scale = float(np.abs(want).max()) if want.size else 1.0
    return max_abs, max_abs / max(scale, 1e-30)


def assert_logits_close(got, want, rel_tol: float, label: str) -> float:
    """Shapes equal and max-abs / max|want| <= rel_tol; returns the measured relative error."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{label}: shape {got.shape} != {want.shape}"
    max_abs, rel = rel_error(got, want)
    assert rel <= rel_tol, f"{label}: relative error {rel:.3e} (max abs {max_abs:.3e}) exceeds {rel_tol:g}"
    return rel


def assert_tokens_equal(got, want, label: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{label}: shape {got.shape} != {want.shape}"
    diff = np.argwhere(got != want)
    assert not len(diff), (f"{label}: {len(diff)} of {got.size} tokens differ, first at {tuple(diff[0])}: "
                           f"got {got[tuple(diff[0])]} want {want[tuple(diff[0])]}")
