"""The two non-HTTP deployments: an engine replica (model, codec, text front end and the batched engine loop
of one machine) and the voice registry (one replica, so an upload through any ingress is seen by all).

Why this shape: a Ray call costs about 10 ms, an AR step 9-23 ms on CPU, so the token loop stays inside the
engine replica and the ingress makes ONE streaming call per request (text in, one event per sentence out).
Prompt codes (3 s = 3.6 KB) travel with each request, so any engine replica serves any voice. Replica
methods never raise for a user's mistake: they answer tagged tuples (`wire`), so the ingress can tell a
refused request from a dead replica (which it retries). Ray is imported lazily, inside methods.
"""
from __future__ import annotations

import asyncio
import dataclasses

from valle_export.errors import ValleExportError

from ..engine import Audio, Done, Engine, EngineConfig, Failed, QueueFull
from ..synthesize import SynthesisSettings, TextInput
from .config import ScaleConfig


def placement() -> dict:
    """Where this replica runs: node id and replica id (shown to clients as response headers)."""
    import ray
    from ray import serve

    try:
        replica = serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (a unit test calling the class directly)
        replica = "local"
    return {"node": ray.get_runtime_context().get_node_id(), "replica": replica}


def open_synthesizer(config: ScaleConfig):
    from ..synthesizer import Synthesizer

    return Synthesizer.open(config.model, config.backend, config.codec, config.variant, config.threads,
                            decoder=config.decoder, n_ctx=config.n_ctx)


class EngineReplica:
    """One machine's engine: every request routed here joins the same continuous batch."""

    def __init__(self, config: ScaleConfig):
        from ..server.speaker import warm_up

        self.tts = open_synthesizer(config)
        self.engine = Engine(self.tts, EngineConfig(max_rows=config.max_rows, max_queue=config.max_queue,
                                                    max_kv_bytes=config.max_kv_mb << 20))
        warm_up(self.tts, self.engine)  # Serve marks the replica ready only after this constructor
        self.where = placement()

    async def speak(self, text: TextInput, prompt, settings: SynthesisSettings, skip: int = 0):
        """Stream one request: ("start", where) then ("audio", index, audio, text) per sentence from `skip`
        on, then ("done", summary) | ("failed", message); or one ("refused", message, param) | ("busy", s).
        A cancelled call (client gone) cancels the request's rows."""
        try:
            pieces = await asyncio.to_thread(self.tts.pieces, text, settings.split_text_by)
        except ValleExportError as err:
            yield ("refused", str(err), "input")
            return
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        try:
            job = self.engine.submit(pieces, prompt, settings,
                                     lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        except QueueFull as err:
            yield ("busy", err.retry_after)
            return
        except ValleExportError as err:
            yield ("refused", str(err), None)
            return
        try:
            yield ("start", {**self.where, "seed": job.seed})
            while True:
                event = await events.get()
                if isinstance(event, Audio):
                    if event.index >= skip:
                        yield ("audio", event.index, event.audio, event.text)
                elif isinstance(event, Done):
                    yield ("done", event.summary)
                    return
                elif isinstance(event, Failed):
                    yield ("failed", event.message)
                    return
        finally:
            if not job.finished:
                self.engine.cancel(job)

    def info(self) -> dict:
        """Placement and load, for `/ready` and tests."""
        return {**self.where, "backend": self.tts.backend.name, "batched": self.engine.batched,
                "sample_rate": self.tts.codec.sample_rate, "active_rows": self.engine.active_rows(),
                "queue_depth": self.engine.queue_depth(), "stats": _plain(self.engine.stats)}

    def check_health(self) -> None:
        """Serve replaces a replica whose engine thread died."""
        if not self.engine._thread.is_alive():
            raise RuntimeError("the engine thread is not running")

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


class VoiceRegistry:
    """The uploaded voices of the whole deployment: a `VoiceStore` (codes on disk, `voices_dir`) behind one
    replica. Answers ("ok", value) or ("unknown" | "bad", message)."""

    def __init__(self, config: ScaleConfig):
        from .. import synthesize as synth
        from ..server.voices import VoiceStore, configured_voice
        from pathlib import Path

        codec = synth.find_codec(Path(config.model), Path(config.codec) if config.codec else None, config.decoder)
        configured = dict(configured_voice(codec, spec) for spec in config.voice_specs)
        self.store = VoiceStore(config.voices_folder(), codec, configured)
        self.sample_rate = codec.sample_rate

    def call(self, method: str, *args):
        from ..server.voices import UnknownVoice

        if method not in ("create", "list", "get", "delete", "prompt"):
            return ("bad", f"no voice method {method!r}")
        try:
            return ("ok", getattr(self.store, method)(*args))
        except UnknownVoice as err:
            return ("unknown", str(err))
        except ValleExportError as err:
            return ("bad", err.problem)

    def info(self) -> dict:
        return {**placement(), "sample_rate": self.sample_rate}


def _plain(stats) -> dict:
    return {k: v for k, v in dataclasses.asdict(stats).items() if isinstance(v, (int, float))}
