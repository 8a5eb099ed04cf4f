"""How close an approximate backend's tokens are to the exact one's, measured two ways.

Free-running greedy agreement (the share of equal codes when each backend generates on its own) is what a
listener gets, but on a random-weight model one early flip sends the AR into another continuation, so it
swings from 20 % to 100 % between inputs. Teacher-forced agreement feeds both backends the exact backend's
own codes and compares the argmax of every AR step and every NAR position: a per-token figure that does not
compound, the one contracts bound. Imports: numpy, the runtime's sequence and pipeline modules.
"""
from __future__ import annotations

import numpy as np

from valle_export import names, sequence as seq

AUDIO_TOKENS = 1024  # AR head rows past these are the stop token


def teacher_forced(backend, cond, codes: np.ndarray) -> dict[str, float]:
    """Argmax agreement of `backend` with `codes` [frames, levels] (greedy codes of the exact backend for
    `cond`): `ar` over the frames (a prefill, then the exact level-0 codes fed one cached step at a time, as
    synthesis runs them: on the AR step graph where the backend has one; stop token excluded as the forced
    loop does), `nar` over every position of levels 1.. (each level fed the exact lower levels)."""
    layout = backend.layout
    ar_half = getattr(backend, "ar", backend)  # a hybrid's AR passes run on its AR backend, not its NAR one
    spec = seq.ar_pass(layout, cond.phn, cond.lang, cond.prompt, [])
    ar = [int(ar_half.prefill(spec)[:AUDIO_TOKENS].argmax())]
    for code in codes[:-1, 0]:
        spec = seq.extend(layout, spec, names.HEAD_AR, [int(code)])
        ar.append(int(ar_half.extend(spec)[:AUDIO_TOKENS].argmax()))
    ar_agree = float((np.array(ar) == codes[:, 0]).mean())
    nar_hits = 0
    for level in range(1, codes.shape[1]):
        logits = backend.logits(seq.nar_pass(layout, cond.phn, cond.lang, cond.prompt, codes[:, :level], level))
        nar_hits += int((logits.argmax(-1) == codes[:, level]).sum())
    return {"ar": ar_agree, "nar": nar_hits / (len(codes) * (codes.shape[1] - 1))}


def free_running(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """Share of equal codes (level 0, all levels) and the length of the identical level-0 prefix."""
    n = min(len(got), len(want))
    diff = np.flatnonzero(got[:n, 0] != want[:n, 0])
    return {"level0": float((got[:n, 0] == want[:n, 0]).mean()), "all": float((got[:n] == want[:n]).mean()),
            "prefix": int(diff[0]) if len(diff) else n}

