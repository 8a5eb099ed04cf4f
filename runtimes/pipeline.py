"""The original's inference flows over any `Backend`: AR level 0, NAR levels 1.., len, NAR-len demasking.

Works on code ids only (no text, no audio files). Prompts are frame-major [frames, levels]; outputs are
frame-major [frames, levels]. Defaults follow the original's documented CLI (design section 1).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from valle_export import names, sequence as seq

from .backend import Backend
from .samplers import GREEDY, SamplerSettings, penalize, sample, softmax, top_n_sigma
from .schedule import demask_timesteps


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """What every pass is conditioned on: phoneme ids (with bos/eos), language id, prompt codes [T, levels], and
    the task row put in front of the prompt (ns / sr; None for tts)."""

    phn: np.ndarray
    lang: int
    prompt: np.ndarray
    task: int | None = None


def generate_ar(backend: Backend, cond: Conditioning, max_frames: int, sampler: SamplerSettings = GREEDY,
                rng: np.random.Generator | None = None, use_cache: bool = True) -> np.ndarray:
    """Level-0 codes until the stop token or `max_frames` (stop token not included). Task passes are recomputed
    every step, as the original does: their earlier positions move as the output grows (no cache can serve)."""
    layout = backend.layout
    use_cache = use_cache and cond.task is None
    spec = seq.ar_pass(layout, cond.phn, cond.lang, cond.prompt, [], cond.task)
    logits = backend.prefill(spec) if use_cache else backend.logits(spec)[-1]
    codes: list[int] = []
    while len(codes) < max_frames:
        logits = penalize(logits, sampler, np.array(codes, dtype=np.int64), layout.stop_token)
        token = int(sample(logits, sampler, rng))
        if token == layout.stop_token:
            break
        codes.append(token)
        if len(codes) == max_frames:
            break
        if use_cache:
            logits = backend.extend(spec := seq.extend(layout, spec, names.HEAD_AR, [token]))
        else:
            logits = backend.logits(seq.ar_pass(layout, cond.phn, cond.lang, cond.prompt, codes, cond.task))[-1]
    return np.array(codes, dtype=np.int64)


def generate_nar(backend: Backend, cond: Conditioning, codes0: np.ndarray, sampler: SamplerSettings = GREEDY,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """Levels 1..levels-1, one bidirectional (or causal, per the layout) pass each: [frames, levels]."""
    resp = np.asarray(codes0, dtype=np.int64).reshape(-1, 1)
    if len(resp) == 0:
        return np.zeros((0, backend.layout.audio_levels), dtype=np.int64)
    for level in range(1, backend.layout.audio_levels):
        spec = seq.nar_pass(backend.layout, cond.phn, cond.lang, cond.prompt, resp, level, cond.task)
        nxt = sample(backend.logits(spec), sampler, rng)
        resp = np.concatenate([resp, nxt[:, None]], axis=1)
    return resp


@dataclasses.dataclass(frozen=True)
class LenResult:
    value: int  # the original's integer: every token but the stop, leading start token 0 included
    tokens: np.ndarray  # the len segment, start token first
    step_inputs: list[np.ndarray]

    @property
    def frames(self) -> int:
        """Duration the original's TTS front end derives from `value` (at least 1 s, +5%)."""
        return int(max(self.value, 75) * 1.05)


def generate_len(backend: Backend, cond: Conditioning, max_steps: int = 10, use_cache: bool = True) -> LenResult:
    """Greedy len digits: start [0], append argmax (clamped to the stop token 10) until stop or max_steps."""
    layout = backend.layout
    stop = layout.len_stop_token
    tokens = [0]
    spec = seq.len_pass(layout, cond.phn, cond.lang, cond.prompt, tokens)
    logits = backend.prefill(spec) if use_cache else backend.logits(spec)[-1]
    steps = []
    for _ in range(max_steps):
        steps.append(np.array(tokens, dtype=np.int64))
        token = min(int(np.argmax(logits)), stop)
        if token == stop:
            break
        tokens.append(token)
        spec = seq.extend(layout, spec, names.TABLE_LEN, [token])
        logits = backend.extend(spec) if use_cache else backend.logits(spec)[-1]
    value = int("".join(str(t) for t in tokens))
    return LenResult(value, np.array(tokens, dtype=np.int64), steps)


@dataclasses.dataclass(frozen=True)
class DemaskSettings:
    """NAR-len demasking as the original runs it (fixture README): cosine schedule over `steps`, constant
    CFG strength max(cfg_strength, 2.5), rescale over the whole [L, V] block, re-masking everywhere."""

    steps: int = 25
    cfg_strength: float = 2.5
    cfg_rescale: float = 0.75
    top_no: float = 0.0
    temperature: float = 0.0  # > 0: sample masked tokens at temperature * (1 - t) (annealed, as the original)


def _masked_count(t: np.float32, length: int, step: int) -> int:
    x = np.float32(t) * np.float32(math.pi) / np.float32(2)  # float32 like the original's tensor math
    return max(1, min(int(math.cos(float(x)) * length), length - step))


def _guided(cond_logits: np.ndarray, null_logits: np.ndarray, s: DemaskSettings) -> np.ndarray:
    strength = np.float32(max(s.cfg_strength, 2.5))
    g = null_logits + (cond_logits - null_logits) * strength
    if s.cfg_rescale > 0:
        factor = np.float32(s.cfg_rescale) * cond_logits.std(ddof=1) / g.std(ddof=1) + np.float32(1 - s.cfg_rescale)
        g = g * np.float32(factor)
    return g.astype(np.float32)


def demask_nar_len(backend: Backend, cond: Conditioning, length: int, settings: DemaskSettings = DemaskSettings(),
                   rng: np.random.Generator | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """NAR-len level 0 of `length` frames; returns (codes [length], inputs fed at each step). Scores are
    always the probability of the argmax (the original's unfiltered greedy pass)."""
    layout = backend.layout
    mask = layout.mask_token
    tokens = np.full(length, mask, dtype=np.int64)
    scores = np.ones(length, dtype=np.float32)
    null_phn = seq.null_phonemes(layout)
    step_inputs = []
    for step, t in enumerate(demask_timesteps(settings.steps)):
        n = _masked_count(t, length, step)
        tokens[np.argsort(scores, kind="stable")[:n]] = mask
        step_inputs.append(tokens.copy())
        c = backend.logits(seq.nar_len_pass(layout, cond.phn, cond.lang, cond.prompt, tokens, cond.task))
        u = backend.logits(seq.nar_len_pass(layout, null_phn, cond.lang, None, tokens))
        g = top_n_sigma(_guided(c, u, settings), settings.top_no)
        picked = np.argmax(g, axis=-1)
        scores = np.take_along_axis(softmax(g), picked[:, None], axis=-1)[:, 0].astype(np.float32)
        if settings.temperature > 0:
            annealed = SamplerSettings(temperature=settings.temperature * float(1 - t))
            picked = sample(g, annealed if annealed.temperature > 0 else GREEDY, rng)
        tokens = np.where(tokens == mask, picked, tokens)
    return tokens, step_inputs
