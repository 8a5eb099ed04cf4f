"""A synthesis engine that steps every active sentence of every request together (continuous batching).

Why: a server that runs one request after the other makes the Nth client wait for N-1 whole syntheses, while
one AR step of a batch of 8 costs little more than a step of 1 (weight-bound on CPU). The engine owns one
backend on one thread. Each iteration it: drops cancelled requests' rows; admits waiting sentences within a
row, KV-byte and prefill-token budget (first sentences of every request before later ones, so time to first
audio stays low under load); runs ONE batched AR step for all AR rows; runs bounded units: one NAR-len
sentence's len, one demasking step of up to `nar_rows` NAR-len sentences in one call, one NAR level of up to
`nar_rows` sentences in one call; decodes finished sentences and hands them to their request in order. The
demasking and NAR units take the sentences that reached them first and keep them until they are done (a
queue in arrival order: finish-first, and no sentence waits behind later arrivals), instead of round-robin,
where every sentence finished together.

Seeding rule (`synthesize.piece_generators`, the same for the CLI and the Python API): sentence i of a
request with seed s draws from `np.random.default_rng([s, i])` for its AR steps (or NAR-len demasking steps)
then its NAR levels, so a seeded request gives the same audio alone, under any load, or from `synthesize`.
Backends without `batch_hidden` (llama.cpp, ggml) run one sentence at a time through the unbatched pipeline,
same rule.
Imports: numpy, the pipeline and its batch steppers (no HTTP, no torch).
"""
from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import threading
import time
from typing import Callable

import numpy as np

from valle_export import sequence as seq
from valle_export.errors import BadInput

from . import synthesize as synth
from .ar_batch import ArBatch, ArRow
from .pipeline import (Conditioning, DemaskRow, NarRow, demask_nar_len, demask_row, demask_step, generate_ar,
                       generate_len, generate_nar, nar_level)


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    max_rows: int = 8  # AR rows stepping together (a guided row counts twice); also caps NAR-len sentences
    max_kv_bytes: int = 1 << 30  # KV cache of the AR batch: every stream at the longest row's longest
    max_prefill_tokens: int = 4096  # positions prefilled per iteration (a long prefill stalls every row)
    nar_rows: int = 4  # sentences per NAR call (NAR levels, and NAR-len demasking steps)
    max_queue: int = 64  # requests waiting for their first row; beyond it `QueueFull`


class QueueFull(Exception):
    """Too many requests waiting; `retry_after` seconds is an estimate of when one will have started."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class Audio:
    """One sentence's audio (event), in request order."""

    index: int
    audio: np.ndarray
    codes: np.ndarray
    text: str


@dataclasses.dataclass(frozen=True)
class Done:
    summary: dict


@dataclasses.dataclass(frozen=True)
class Failed:
    message: str


Event = Audio | Done | Failed


@dataclasses.dataclass(eq=False)
class Job:
    """One request: its sentences, settings, seed, and where its events go (`emit`, called on the engine
    thread: it must not block)."""

    pieces: list[tuple[np.ndarray, int, str]]
    prompt: np.ndarray | None
    settings: synth.SynthesisSettings
    seed: int
    emit: Callable[[Event], None]
    id: int = 0
    cancelled: bool = False
    started: bool = False
    finished: bool = False
    submitted: float = dataclasses.field(default_factory=time.perf_counter)
    first_audio: float | None = None
    next_index: int = 0
    ready: dict = dataclasses.field(default_factory=dict)
    frames: int = 0
    samples: int = 0


@dataclasses.dataclass(eq=False)
class Sentence:
    """One row of work: a piece of a job, with its own generator, from AR (or len + demasking) to audio."""

    job: Job
    index: int
    cond: Conditioning
    rng: np.random.Generator
    max_frames: int
    resp: np.ndarray | None = None  # [frames, levels so far] once level 0 is known
    demask: DemaskRow | None = None  # NAR-len level 0 between demasking steps (batched backends)

    @property
    def settings(self) -> synth.SynthesisSettings:
        return self.job.settings


@dataclasses.dataclass
class EngineStats:
    """Counters the server exports (Prometheus) and the benchmark reads."""

    ar_steps: int = 0
    ar_row_steps: int = 0
    ar_seconds: float = 0.0
    last_batch: int = 0
    nar_units: int = 0
    demask_units: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    jobs_cancelled: int = 0
    rejected: int = 0
    audio_seconds: float = 0.0
    first_audio_s: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=256))
    rtf: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=256))


class Engine:
    """Owns `tts` (a `Synthesizer`: backend, codec, text front end) and one thread stepping its requests."""

    def __init__(self, tts, config: EngineConfig = EngineConfig()):
        self.tts, self.backend, self.config = tts, tts.backend, config
        self.layout = self.backend.layout
        self.batched = hasattr(self.backend, "batch_hidden")
        self.stats = EngineStats()
        self._waiting: list[tuple[int, int, int, Sentence]] = []  # heap: (sentence index, job id, n, sentence)
        self._nar: collections.deque[Sentence] = collections.deque()
        self._serial: collections.deque[Sentence] = collections.deque()  # NAR-len's len, or unbatched backends
        self._demask: collections.deque[Sentence] = collections.deque()  # NAR-len level 0, in arrival order
        self._ar = ArBatch(self.backend) if self.batched else None
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="valle-engine", daemon=True)
        self._thread.start()

    # --- requests ----------------------------------------------------------------------------------------
    def submit(self, pieces: list[tuple[np.ndarray, int, str]], prompt: np.ndarray | None,
               settings: synth.SynthesisSettings, emit: Callable[[Event], None]) -> Job:
        """Queue a request (pieces from `Synthesizer.pieces`); raises `QueueFull` or `BadInput` at once."""
        settings = dataclasses.replace(settings, modality=self.tts.modality(settings.modality))
        if settings.context_history:
            raise BadInput("context_history is not supported by the engine (sentences run in parallel)")
        if settings.task != "tts":
            raise BadInput(f"task {settings.task!r} is not served by the engine (tts only; use synthesize)")
        for phn, lang, _ in pieces:  # ids out of range fail here, not inside a batch of other requests
            seq.ar_pass(self.layout, phn, lang, prompt, [])
        seed = settings.seed if settings.seed is not None else int(np.random.SeedSequence().entropy % (2**63))
        job = Job(list(pieces), prompt, settings, seed, emit)
        with self._wake:
            if self.queue_depth() >= self.config.max_queue:
                self.stats.rejected += 1
                raise QueueFull(self._retry_after())
            job.id = next(self._ids)
            self._jobs[job.id] = job
            frames = settings.max_frames(self.layout.frame_rate)
            rngs = synth.piece_generators(seed, len(pieces))
            for i, (phn, lang, _) in enumerate(pieces):
                s = Sentence(job, i, Conditioning(phn, lang, prompt), rngs[i], frames)
                heapq.heappush(self._waiting, (i, job.id, next(self._order), s))
            self._wake.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Its rows are freed at the next iteration; no further events are emitted for it."""
        job.cancelled = True
        with self._wake:
            self._wake.notify()

    def queue_depth(self) -> int:
        with self._wake:
            return sum(1 for j in self._jobs.values() if not j.started)

    def active_rows(self) -> int:
        return (len(self._ar) if self._ar else 0) + len(self._nar) + len(self._serial) + len(self._demask)

    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def _retry_after(self) -> int:
        recent = list(self.stats.rtf)[-16:]
        return max(1, int(round(np.mean(recent) * 12))) if recent else 5

    # --- convenience: a blocking stream per request ------------------------------------------------------
    def stream(self, pieces, prompt, settings):
        """Yield `Audio` per sentence in order, then the `Done` event; raise `BadInput` on a failure.
        Closing the generator early cancels the request."""
        import queue

        q: queue.Queue = queue.Queue()
        job = self.submit(pieces, prompt, settings, q.put)
        try:
            while True:
                event = q.get()
                if isinstance(event, Failed):
                    raise BadInput(event.message)
                yield event
                if isinstance(event, Done):
                    return
        finally:
            if not job.finished:
                self.cancel(job)

    # --- the loop ----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self._has_work():
                    self._wake.wait()
                if self._stop:
                    return
            try:
                self._iteration()
            except Exception as err:  # a bug must not kill the server: fail every active job, keep serving
                self._fail_all(f"internal error: {type(err).__name__}: {err}")

    def _has_work(self) -> bool:
        return bool(self._waiting or self.active_rows())

    def _iteration(self) -> None:
        self._drop_cancelled()
        self._admit()
        if self._ar is not None and len(self._ar):
            t = time.perf_counter()
            self.stats.last_batch = self._ar.streams
            finished = self._ar.step()
            self.stats.ar_seconds += time.perf_counter() - t
            self.stats.ar_steps += 1
            self.stats.ar_row_steps += self.stats.last_batch
            for row in finished:
                self._level0_done(row.tag, row.result)
        if self._serial:
            self._serial_unit(self._serial.popleft())
        if self._demask:
            self._demask_unit()
        if self._nar:
            self._nar_unit()

    def _drop_cancelled(self) -> None:
        with self._wake:
            if not any(j.cancelled for j in self._jobs.values()):
                return
        if self._ar is not None:
            self._ar.remove(lambda r: not r.tag.job.cancelled)
        self._nar = collections.deque(s for s in self._nar if not s.job.cancelled)
        self._serial = collections.deque(s for s in self._serial if not s.job.cancelled)
        self._demask = collections.deque(s for s in self._demask if not s.job.cancelled)
        with self._wake:
            self._waiting = [w for w in self._waiting if not w[3].job.cancelled]
            heapq.heapify(self._waiting)
            for job in [j for j in self._jobs.values() if j.cancelled]:
                job.finished = True
                self.stats.jobs_cancelled += 1
                del self._jobs[job.id]

    def _longest(self, s: Sentence) -> int:
        """Positions a sentence's AR cache may reach (text, prompt, every allowed frame)."""
        return len(s.cond.phn) + (len(s.cond.prompt) if s.cond.prompt is not None else 0) + s.max_frames + 8

    def _kv_bytes(self, streams: int, longest: int) -> int:
        """KV bytes of `streams` cache rows all `longest` positions wide: the batch caches are padded to their
        widest row (a BatchCache's columns, a StepCache's capacity), so every stream costs the longest one."""
        per_position = 2 * getattr(self.backend, "n_layers", 1) * getattr(self.backend, "kv_heads", 1) \
            * getattr(self.backend, "head_dim", self.layout.hidden_size) * 4
        return streams * longest * per_position

    def _admit(self) -> None:
        """Move waiting sentences into work within the budgets (always at least one when nothing runs)."""
        joining, tokens = [], 0
        rows = self._ar.streams if self._ar is not None else 0
        longest = max((self._longest(r.tag) for r in self._ar.rows), default=0) if self._ar is not None else 0
        with self._wake:
            while self._waiting:
                s = self._waiting[0][3]
                serial = not self.batched or s.settings.modality == "nar-len"
                if serial:
                    if len(self._serial) + len(self._demask) >= self.config.max_rows:
                        break
                    heapq.heappop(self._waiting)
                    self._serial.append(s)
                    s.job.started = True
                    continue
                streams = 1 + int(s.settings.guidance.on)
                need_longest, need_tokens = max(longest, self._longest(s)), len(s.cond.phn) + s.max_frames // 8
                busy = rows or joining
                if busy and (rows + streams > self.config.max_rows
                             or self._kv_bytes(rows + streams, need_longest) > self.config.max_kv_bytes
                             or tokens + need_tokens > self.config.max_prefill_tokens):
                    break
                heapq.heappop(self._waiting)
                s.job.started = True
                joining.append(s)
                rows, longest, tokens = rows + streams, need_longest, tokens + need_tokens
        if joining:
            new = [ArRow(s.cond, s.max_frames, s.settings.ar, s.rng, s.settings.guidance, tag=s) for s in joining]
            for row in self._ar.admit(new):
                self._level0_done(row.tag, row.result)

    def _level0_done(self, s: Sentence, codes0: np.ndarray) -> None:
        s.resp = np.asarray(codes0, dtype=np.int64).reshape(-1, 1)
        if len(s.resp) == 0 or self.layout.audio_levels == 1:
            self._finish(s)
        else:
            self._nar.append(s)

    def _serial_unit(self, s: Sentence) -> None:
        """NAR-len's len for one sentence (then its demasking joins the batched queue); on unbatched backends
        the whole sentence."""
        cond, st = s.cond, s.settings
        if st.modality == "nar-len":
            frames = min(generate_len(self.backend, cond).frames, s.max_frames)
            if self.batched:
                s.demask = demask_row(self.layout, cond, frames, st.demask, s.rng)
                if s.demask.done:  # no demasking step asked for: level 0 stays masked, as demask_nar_len
                    self._level0_done(s, s.demask.tokens)
                else:
                    self._demask.append(s)
                return
            codes0, _ = demask_nar_len(self.backend, cond, frames, st.demask, s.rng)
        else:
            codes0 = generate_ar(self.backend, cond, s.max_frames, st.ar, s.rng, guidance=st.guidance)
        if self.batched:
            self._level0_done(s, codes0)
            return
        s.resp = generate_nar(self.backend, cond, codes0, st.nar, s.rng, st.guidance) if len(codes0) else \
            np.zeros((0, self.layout.audio_levels), dtype=np.int64)
        self._finish(s)

    def _demask_unit(self) -> None:
        """One NAR-len demasking step of up to `nar_rows` sentences in one call (`pipeline.demask_step`), the
        earliest to arrive first (finish-first, as the NAR unit)."""
        group = list(itertools.islice(self._demask, self.config.nar_rows))
        demask_step(self.backend, [s.demask for s in group])
        self.stats.demask_units += 1
        for s in group:
            if s.demask.done:
                self._demask.remove(s)
                self._level0_done(s, s.demask.tokens)
                s.demask = None

    def _nar_unit(self) -> None:
        """One NAR level of up to `nar_rows` sentences in one call (`pipeline.nar_level`)."""
        group = list(itertools.islice(self._nar, self.config.nar_rows))  # the earliest to reach NAR
        rows = [NarRow(s.cond, s.resp, s.settings.nar, s.rng, s.settings.guidance) for s in group]
        nar_level(self.backend, rows)
        self.stats.nar_units += 1
        for s, row in zip(group, rows):
            s.resp = row.resp
            if s.resp.shape[1] == self.layout.audio_levels:
                self._nar.remove(s)
                self._finish(s)

    # --- delivery ----------------------------------------------------------------------------------------
    def _finish(self, s: Sentence) -> None:
        """Decode a finished sentence and release every ready sentence of its job in order."""
        job = s.job
        if job.cancelled:
            return
        if len(s.resp):
            audio = synth.decode(self.tts.codec, s.resp).astype(np.float32)
        else:  # the model stopped at once: an empty sentence rather than a failed request
            audio = np.zeros(0, dtype=np.float32)
        job.ready[s.index] = Audio(s.index, audio, s.resp, job.pieces[s.index][2])
        while job.next_index in job.ready:
            event = job.ready.pop(job.next_index)
            job.next_index += 1
            job.frames += len(event.codes)
            job.samples += len(event.audio)
            if job.first_audio is None:
                job.first_audio = time.perf_counter()
                self.stats.first_audio_s.append(job.first_audio - job.submitted)
            job.emit(event)
        if job.next_index == len(job.pieces):
            self._complete(job)

    def _complete(self, job: Job) -> None:
        elapsed = time.perf_counter() - job.submitted
        seconds = job.samples / self.tts.codec.sample_rate
        self.stats.jobs_done += 1
        self.stats.audio_seconds += seconds
        if seconds:
            self.stats.rtf.append(elapsed / seconds)
        job.finished = True
        with self._wake:
            self._jobs.pop(job.id, None)
        phonemes = int(sum(len(p) for p, _, _ in job.pieces))
        job.emit(Done({"pieces": len(job.pieces), "frames": job.frames, "audio_s": round(seconds, 3),
                       "seed": job.seed, "elapsed_s": round(elapsed, 4),
                       "first_audio_s": round(job.first_audio - job.submitted, 4) if job.first_audio else None,
                       "usage": {"input_tokens": phonemes, "output_tokens": job.frames,
                                 "total_tokens": phonemes + job.frames}}))

    def _fail_all(self, message: str) -> None:
        with self._wake:
            jobs = list(self._jobs.values())
            self._jobs.clear()
            self._waiting.clear()
        self._nar.clear()
        self._serial.clear()
        self._demask.clear()
        if self._ar is not None:
            self._ar = ArBatch(self.backend)
        for job in jobs:
            job.finished = True
            self.stats.jobs_failed += 1
            job.emit(Failed(message))
