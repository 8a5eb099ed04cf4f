"""Checks every backend's parity tests share: greedy flows identical, cached steps vs the reference, and
argmax agreement over every pass kind."""
from __future__ import annotations

import numpy as np

from valle_export import sequence as seq

from .compare import assert_logits_close, assert_tokens_equal


def all_passes(layout, cond, resp):
    """(name, spec) of an AR pass, every NAR level, a len pass and both NAR-len passes (cond and null)."""
    yield "ar", seq.ar_pass(layout, cond.phn, cond.lang, cond.prompt, resp[:, 0])
    for q in range(1, layout.audio_levels):
        yield f"nar.{q}", seq.nar_pass(layout, cond.phn, cond.lang, cond.prompt, resp, q)
    yield "len", seq.len_pass(layout, cond.phn, cond.lang, cond.prompt, [0, 4, 2])
    masked = np.where(np.arange(len(resp)) % 3 == 0, layout.mask_token, resp[:, 0])
    yield "narlen", seq.nar_len_pass(layout, cond.phn, cond.lang, cond.prompt, masked)
    yield "narlen_null", seq.nar_len_pass(layout, seq.null_phonemes(layout), cond.lang, None, masked)


def assert_greedy_flows_identical(backend, ref, cond, frames: int = 40, demask_frames: int = 15,
                                  demask_steps: int = 5) -> None:
    """Greedy AR (cached), NAR levels, len and NAR-len demasking give the reference's tokens."""
    from runtimes.pipeline import DemaskSettings, demask_nar_len, generate_ar, generate_len, generate_nar

    ar = generate_ar(ref, cond, frames)
    assert_tokens_equal(generate_ar(backend, cond, frames), ar, f"{backend.name} greedy AR (cached)")
    assert_tokens_equal(generate_nar(backend, cond, ar), generate_nar(ref, cond, ar), f"{backend.name} greedy NAR")
    got_len, want_len = generate_len(backend, cond).value, generate_len(ref, cond).value
    assert got_len == want_len, f"{backend.name} len: {got_len} != {want_len}"
    s = DemaskSettings(steps=demask_steps)
    assert_tokens_equal(demask_nar_len(backend, cond, demask_frames, s)[0],
                        demask_nar_len(ref, cond, demask_frames, s)[0], f"{backend.name} NAR-len")


def assert_cached_steps_close(backend, ref, cond, seed: int, steps: int, rel_tol: float, label: str) -> None:
    """Prefill then `steps` cached AR steps, each row's logits vs the reference's cached steps."""
    spec = seq.ar_pass(ref.layout, cond.phn, cond.lang, cond.prompt, [])
    got, want = [backend.prefill(spec)], [ref.prefill(spec)]
    for code in np.random.default_rng(seed).integers(0, 1024, steps):
        spec = seq.extend(ref.layout, spec, "AR:0:0", [int(code)])
        got.append(backend.extend(spec))
        want.append(ref.extend(spec))
    assert_logits_close(np.stack(got), np.stack(want), rel_tol, label)


def argmax_agreement_of(got: list[np.ndarray], want: list[np.ndarray]) -> tuple[int, int]:
    """(agreeing rows, rows) of argmax over pairs of logits; a missing or extra row counts as disagreement."""
    agree = total = 0
    for g, w in zip(got, want, strict=True):
        n = min(len(g), len(w))
        agree += int((g[:n].argmax(-1) == w[:n].argmax(-1)).sum())
        total += max(len(g), len(w))
    if total == 0:
        raise AssertionError("argmax agreement over no rows")
    return agree, total


def sequence_agreement(got: np.ndarray, want: np.ndarray) -> float:
    """Share of agreeing tokens over the longer sequence: a shorter output counts its missing tokens as
    disagreement, and two empty outputs are an error, not agreement."""
    got, want = np.asarray(got), np.asarray(want)
    n, longest = min(len(got), len(want)), max(len(got), len(want))
    if longest == 0:
        raise AssertionError("token agreement over two empty outputs")
    per_row = int(np.prod(got.shape[1:])) if got.ndim > 1 else 1
    return float(np.sum(got[:n] == want[:n]) / (longest * per_row))


def argmax_agreement(backend, ref, cond, resp) -> tuple[int, int]:
    """(agreeing rows, rows) of argmax over every pass kind, both backends in this process."""
    specs = [spec for _, spec in all_passes(ref.layout, cond, resp)]
    return argmax_agreement_of([backend.logits(s) for s in specs], [ref.logits(s) for s in specs])
