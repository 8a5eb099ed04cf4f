"""The original's inference flows over any `Backend`: AR level 0, NAR levels 1.., len, NAR-len demasking.

Works on code ids only (no text, no audio files). Prompts are frame-major [frames, levels]; outputs are
frame-major [frames, levels]. Defaults follow the original's documented CLI (design section 1).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from valle_export import names, sequence as seq
from valle_export.codec_spec import ENCODEC

from .backend import Backend
from .samplers import GREEDY, SamplerSettings, draw, process, sample, softmax
from .schedule import demask_timesteps


@dataclasses.dataclass(frozen=True)
class Context:
    """Earlier pieces of a long text (the original's `--context-history`): their phoneme ids (each with
    bos/eos, concatenated) and level-0 codes, fed before the current piece's at level 0 and sliced off."""

    phn: np.ndarray
    codes: np.ndarray


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """What every pass is conditioned on: phoneme ids (with bos/eos), language id, prompt codes [T, levels],
    and optionally the context of earlier pieces (level 0 only, as the original)."""

    phn: np.ndarray
    lang: int
    prompt: np.ndarray
    context: Context | None = None
    task: int | None = None  # the task row put in front of the prompt (ns / sr; None for tts)

    @property
    def level0_phn(self) -> np.ndarray:
        """The original's `concat([prefix[:-1], text[1:]])`: context phonemes without their last eos, then
        this piece's without its bos."""
        if self.context is None:
            return self.phn
        return np.concatenate([self.context.phn[:-1], self.phn[1:]]).astype(np.int64)

    @property
    def prefix_codes(self) -> np.ndarray:
        return np.zeros(0, np.int64) if self.context is None else np.asarray(self.context.codes, np.int64)


@dataclasses.dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance as the original applies it to AR and NAR levels: off at strength 0; the
    null input is phonemes [bos, eos] and no prompt; rescale uses one std over the response block."""

    strength: float = 0.0
    rescale: float = 0.75

    @property
    def on(self) -> bool:
        return self.strength > 0


def cfg_logits(cond: np.ndarray, null: np.ndarray, strength: float, rescale: float) -> np.ndarray:
    """vall_e/samplers.py cfg_logits on one block [rows, V]: null + (cond - null) * strength, times
    rescale * std(cond) / std(guided) + (1 - rescale) (unbiased std over the whole block)."""
    g = null + (cond - null) * np.float32(strength)
    if rescale > 0:
        factor = np.float32(rescale) * cond.std(ddof=1) / g.std(ddof=1) + np.float32(1 - rescale)
        g = g * np.float32(factor)
    return g.astype(np.float32)


def batched_logits(backend: Backend, specs: list[seq.PassSpec]) -> list[np.ndarray]:
    """Full-pass logits of several passes: one call on a backend with a batch axis (`batch_logits`: the passes
    share every weight read, and a compute-bound pass runs its GEMMs at a larger shape), else one call each."""
    batch = getattr(backend, "batch_logits", None)
    return batch(specs) if batch is not None and len(specs) > 1 else [backend.logits(s) for s in specs]


class _ArStream:
    """One causal AR sequence on a backend: cached (prefill / extend) or recomputed every step. Two streams
    (conditional and null, for guidance) share a backend's single cache through `cache_state` /
    `set_cache_state` where the backend has them, else both recompute."""

    def __init__(self, backend: Backend, spec: seq.PassSpec, use_cache: bool, rebuild=None):
        self.backend, self.spec, self.use_cache, self.state = backend, spec, use_cache, None
        self.rebuild, self.tokens = rebuild, []  # rebuild(tokens): a task pass whose earlier positions move

    def _run(self, fn):
        if self.use_cache and self.state is not None:
            self.backend.set_cache_state(self.state)
        out = fn(self.spec)
        if self.use_cache and hasattr(self.backend, "cache_state"):
            self.state = self.backend.cache_state()
        return out

    def start(self, all_rows: bool) -> np.ndarray:
        """Logits rows [n, V]: every output row when `all_rows` (guidance rescale needs them), else the last."""
        if not self.use_cache:
            rows = self.backend.logits(self.spec)
            return rows if all_rows else rows[-1:]
        last = self._run(self.backend.prefill)[None]
        if all_rows and self.spec.n_outputs > 1:
            return np.concatenate([self.backend.logits(self.spec)[:-1], last])
        return last

    def step(self, token: int) -> np.ndarray:
        self.tokens.append(token)
        if self.rebuild is not None:
            self.spec = self.rebuild(self.tokens)
            return self.backend.logits(self.spec)[-1]
        self.spec = seq.extend(self.backend.layout, self.spec, names.HEAD_AR, [token])
        if not self.use_cache:
            return self.backend.logits(self.spec)[-1]
        return self._run(self.backend.extend)


def generate_ar(backend: Backend, cond: Conditioning, max_frames: int, sampler: SamplerSettings = GREEDY,
                rng: np.random.Generator | None = None, use_cache: bool = True,
                guidance: Guidance = Guidance()) -> np.ndarray:
    """Level-0 codes until the stop token or `max_frames` new codes (stop token and context not included).
    With guidance, a second (null) sequence runs beside the conditional one, each with its own KV cache. Task
    passes (ns / sr) are recomputed every step, as the original does: their earlier positions move as the
    output grows, so no cache can serve them."""
    layout = backend.layout
    codes = [int(c) for c in cond.prefix_codes]
    n_prefix = len(codes)
    both_cached = use_cache and cond.task is None and (not guidance.on or hasattr(backend, "cache_state"))
    rebuild = None
    if cond.task is not None:
        def rebuild(tokens: list[int]) -> seq.PassSpec:
            return seq.ar_pass(layout, cond.level0_phn, cond.lang, cond.prompt, codes[:n_prefix] + tokens,
                               cond.task)
    main = _ArStream(backend, seq.ar_pass(layout, cond.level0_phn, cond.lang, cond.prompt, codes, cond.task),
                     both_cached, rebuild)
    rows = [main.start(guidance.on)]
    if guidance.on:
        null = _ArStream(backend, seq.ar_pass(layout, seq.null_phonemes(layout), cond.lang, None, codes),
                         both_cached)
        null_rows = [null.start(True)]
    while len(codes) - n_prefix < max_frames:
        logits = rows[-1][-1]
        if guidance.on:
            block = cfg_logits(np.concatenate(rows), np.concatenate(null_rows), guidance.strength, guidance.rescale)
            logits = block[-1]
        token = int(sample(logits, sampler, rng, np.array(codes, dtype=np.int64), layout.stop_token))
        if token == layout.stop_token:
            break
        codes.append(token)
        if len(codes) - n_prefix == max_frames:
            break
        rows.append(main.step(token)[None])
        if guidance.on:
            null_rows.append(null.step(token)[None])
    return np.array(codes[n_prefix:], dtype=np.int64)


@dataclasses.dataclass
class NarRow:
    """A piece between its level 0 and its last level: `resp` [frames, levels so far] gains one level per
    `nar_level` call, sampled with the piece's own settings and generator."""

    cond: Conditioning
    resp: np.ndarray
    sampler: SamplerSettings = GREEDY
    rng: np.random.Generator | None = None
    guidance: Guidance = Guidance()

    @classmethod
    def after_level0(cls, cond: Conditioning, codes0, sampler: SamplerSettings = GREEDY,
                     rng: np.random.Generator | None = None, guidance: Guidance = Guidance()) -> "NarRow":
        """A row holding level 0 `codes0` [frames] as its first column."""
        return cls(cond, np.asarray(codes0, dtype=np.int64).reshape(-1, 1), sampler, rng, guidance)


def nar_level(backend: Backend, rows: list[NarRow]) -> None:
    """The next level of every row, all their passes (a guided row adds its guidance-free pass) in one
    `batched_logits` call. The previous level's codes feed the repetition penalty and DRY, as the original's
    `prev_list`. A row's logits in a batch equal its own within contracts.BATCH_INVARIANT_REL (the widest row
    sets the padding), so a sampled token is the same unless a draw falls within that of a boundary."""
    layout = backend.layout
    specs = []
    for row in rows:
        level, c = row.resp.shape[1], row.cond
        specs.append(seq.nar_pass(layout, c.phn, c.lang, c.prompt, row.resp, level, c.task))
        if row.guidance.on:
            specs.append(seq.nar_pass(layout, seq.null_phonemes(layout), c.lang, None, row.resp, level))
    logits = iter(batched_logits(backend, specs))
    for row in rows:
        out = next(logits)
        if row.guidance.on:
            out = cfg_logits(out, next(logits), row.guidance.strength, row.guidance.rescale)
        nxt = sample(out, row.sampler, row.rng, previous=row.resp[:, -1])
        row.resp = np.concatenate([row.resp, nxt[:, None]], axis=1)


def generate_nar_together(backend: Backend, rows: list[NarRow]) -> None:
    """Every row's levels up to the last, one `nar_level` call per level. The rows start at the same level
    (level 0 done); a row with no frame is left as it is ([0, levels so far]: `generate_nar` returns the
    [0, levels] empty result, and the callers refuse or skip an empty level 0 before)."""
    rows = [r for r in rows if len(r.resp)]
    if len({r.resp.shape[1] for r in rows}) > 1:
        raise ValueError(f"rows at different levels: {sorted({r.resp.shape[1] for r in rows})}")
    while rows and rows[0].resp.shape[1] < backend.layout.audio_levels:
        nar_level(backend, rows)


def generate_nar(backend: Backend, cond: Conditioning, codes0: np.ndarray, sampler: SamplerSettings = GREEDY,
                 rng: np.random.Generator | None = None, guidance: Guidance = Guidance()) -> np.ndarray:
    """Levels 1..levels-1 of one piece, one bidirectional (or causal, per the layout) pass each: [frames,
    levels]."""
    row = NarRow.after_level0(cond, codes0, sampler, rng, guidance)
    if len(row.resp) == 0:
        return np.zeros((0, backend.layout.audio_levels), dtype=np.int64)
    generate_nar_together(backend, [row])
    return row.resp


LEN_MARGIN = 1.05  # the original's len -> frames margin


@dataclasses.dataclass(frozen=True)
class LenResult:
    value: int  # the original's integer: every token but the stop, leading start token 0 included
    tokens: np.ndarray  # the len segment, start token first
    step_inputs: list[np.ndarray]

    @property
    def frames(self) -> int:
        """Duration the original's TTS front end derives from `value` (at least 1 s of frames, +5%)."""
        return int(max(self.value, ENCODEC.frame_rate) * LEN_MARGIN)


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
    CFG strength max(cfg_strength, 2.5), rescale over the whole [L, V] block, re-masking everywhere.
    `sampler.temperature` is annealed as T * (1 - t); its filters shape both the draw and the scores."""

    steps: int = 25
    cfg_strength: float = 2.5
    cfg_rescale: float = 0.75
    sampler: SamplerSettings = GREEDY


MIN_NAR_LEN_CFG = 2.5  # the original's minimum_cfg_strength: NAR-len guidance is never weaker


def _masked_count(t: np.float32, length: int, step: int) -> int:
    x = np.float32(t) * np.float32(math.pi) / np.float32(2)  # float32 like the original's tensor math
    return max(1, min(int(math.cos(float(x)) * length), length - step))


@dataclasses.dataclass
class DemaskRow:
    """A piece's NAR-len level 0 between demasking steps (`demask_row` makes one, `demask_step` advances)."""

    cond: Conditioning
    settings: DemaskSettings
    rng: np.random.Generator | None
    tokens: np.ndarray  # [length]: the mask token where not yet decided
    scores: np.ndarray  # [length]: confidence of each position's token, the lowest re-masked first
    timesteps: list[float]
    step: int = 0
    step_inputs: list[np.ndarray] = dataclasses.field(default_factory=list)  # what each step fed

    @property
    def done(self) -> bool:
        return self.step == len(self.timesteps)


def demask_row(layout, cond: Conditioning, length: int, settings: DemaskSettings = DemaskSettings(),
               rng: np.random.Generator | None = None) -> DemaskRow:
    """A row of `length` masked frames before its first demasking step."""
    return DemaskRow(cond, settings, rng, np.full(length, layout.mask_token, dtype=np.int64),
                     np.ones(length, dtype=np.float32), list(demask_timesteps(settings.steps)))


def demask_step(backend: Backend, rows: list[DemaskRow]) -> None:
    """One demasking step of every row, their conditional and guidance-free passes in one `batched_logits`
    call. Each row re-masks its lowest-scored positions, draws the masked tokens from the filtered logits at
    the annealed temperature, and scores every position by the probability of the argmax of the same filters
    at temperature 0 (the original's two `sample` calls)."""
    layout = backend.layout
    mask, null_phn = layout.mask_token, seq.null_phonemes(layout)
    specs, previous = [], []
    for row in rows:
        c, length = row.cond, len(row.tokens)
        previous.append(row.tokens.copy())
        n = _masked_count(row.timesteps[row.step], length, row.step)
        row.tokens[np.argsort(row.scores, kind="stable")[:n]] = mask
        row.step_inputs.append(row.tokens.copy())
        fed = np.concatenate([c.prefix_codes, row.tokens])
        specs += [seq.nar_len_pass(layout, c.level0_phn, c.lang, c.prompt, fed, c.task),
                  seq.nar_len_pass(layout, null_phn, c.lang, None, fed)]
    logits = iter(batched_logits(backend, specs))
    for row, prev in zip(rows, previous):
        length, t, s = len(row.tokens), row.timesteps[row.step], row.settings.sampler
        c, u = next(logits)[-length:], next(logits)[-length:]
        g = cfg_logits(c, u, max(row.settings.cfg_strength, MIN_NAR_LEN_CFG), row.settings.cfg_rescale)
        unfiltered = process(g, dataclasses.replace(s, temperature=0.0), prev)
        best = np.argmax(unfiltered, axis=-1)
        row.scores = np.take_along_axis(softmax(unfiltered), best[:, None], axis=-1)[:, 0].astype(np.float32)
        annealed = dataclasses.replace(s, temperature=s.temperature * float(1 - t))
        # at temperature 0 the draw is the argmax of the very logits the scores come from
        picked = best if annealed.greedy else draw(process(g, annealed, prev), False, row.rng)
        row.tokens = np.where(row.tokens == mask, picked, row.tokens)
        row.step += 1


def demask_together(backend: Backend, rows: list[DemaskRow]) -> None:
    """Every row's demasking steps, one `demask_step` call per step. The rows have the same steps left."""
    left = {len(r.timesteps) - r.step for r in rows}
    if len(left) > 1:
        raise ValueError(f"rows with different steps left: {sorted(left)}")
    while rows and not rows[0].done:
        demask_step(backend, rows)


def demask_nar_len(backend: Backend, cond: Conditioning, length: int, settings: DemaskSettings = DemaskSettings(),
                   rng: np.random.Generator | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """NAR-len level 0 of `length` frames, one piece: returns (codes [length], inputs fed at each step)."""
    row = demask_row(backend.layout, cond, length, settings, rng)
    demask_together(backend, [row])
    return row.tokens, row.step_inputs
