"""What the HTTP layer needs from synthesis, and its one-machine implementation over the in-process engine.

Why an interface: the same FastAPI app (`app.create_app`) serves one machine (`LocalSpeaker`: text front end
and `Engine` in this process) and a Ray Serve cluster (`runtimes.scale.remote.RaySpeaker`: one remote call
per request to an engine replica, events streamed back). The app only sees `start` -> a stream of the
engine's events (`Audio` per sentence in order, then `Done`, or `Failed`).
"""
from __future__ import annotations

import asyncio
from typing import Protocol

import numpy as np
from starlette.concurrency import run_in_threadpool

from valle_export.errors import ValleExportError

from ..engine import Engine, Event
from ..synthesize import SynthesisSettings, TextInput


class Refused(Exception):
    """A request the synthesis side refused before starting (bad text, ids out of range): HTTP 400.
    `param`: the request field to blame, or None."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


class SpeechStream(Protocol):
    seed: int
    headers: dict[str, str]  # extra response headers (the Ray path names the node that served it)

    async def next(self) -> Event:
        """The next event; cancelling the awaiting task cancels the request."""

    def close(self) -> None:
        """Cancel the request if it has not finished (a disconnect)."""


class Speaker(Protocol):
    sample_rate: int

    async def start(self, text: TextInput, prompt: np.ndarray | None, settings: SynthesisSettings) -> SpeechStream:
        """Queue a request; raises `Refused` or `runtimes.engine.QueueFull` at once."""

    def warm_up(self) -> None:
        """Block until a first synthesis ran (called on a thread; `/ready` answers 503 until then)."""

    def status(self) -> dict:
        """Extra fields of `/ready`."""

    def metrics(self) -> bytes:
        """`/metrics` in Prometheus' text format."""


class LocalStream:
    def __init__(self, engine: Engine, job, events: asyncio.Queue):
        self.engine, self.job, self.events = engine, job, events
        self.seed, self.headers = job.seed, {}

    async def next(self) -> Event:
        try:
            return await self.events.get()
        except asyncio.CancelledError:
            self.engine.cancel(self.job)
            raise

    def close(self) -> None:
        if not self.job.finished:
            self.engine.cancel(self.job)


class LocalSpeaker:
    """`tts` (a `Synthesizer`) and its `Engine` in this process: what `valle-export serve` runs."""

    def __init__(self, tts, engine: Engine):
        self.tts, self.engine = tts, engine
        self.sample_rate = tts.codec.sample_rate

    async def start(self, text: TextInput, prompt, settings: SynthesisSettings) -> LocalStream:
        try:
            pieces = await run_in_threadpool(self.tts.pieces, text, settings.split_text_by)
        except ValleExportError as err:
            raise Refused(str(err), "input") from None
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        try:
            job = self.engine.submit(pieces, prompt, settings,
                                     lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        except ValleExportError as err:
            raise Refused(str(err)) from None
        return LocalStream(self.engine, job, events)

    def warm_up(self) -> None:
        warm_up(self.tts, self.engine)

    def status(self) -> dict:
        return {"backend": self.tts.backend.name, "batched": self.engine.batched}

    def metrics(self) -> bytes:
        from .metrics import metrics_text

        return metrics_text(self.engine)


def warm_up(tts, engine: Engine) -> None:
    """One tiny synthesis (bos, eos), so the first client does not pay for graph initialisation."""
    pieces = [(np.array([tts.backend.layout.bos_token, tts.backend.layout.eos_token]), 0, "")]
    for _ in engine.stream(pieces, None, SynthesisSettings(max_duration=0.1, seed=0, demask_steps=1)):
        pass
