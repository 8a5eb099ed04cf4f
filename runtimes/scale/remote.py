"""The ingress side on Ray: the one-machine FastAPI app over a `RaySpeaker` (one streaming call per request
to an engine replica) and `RemoteVoices` (the registry deployment).

Failure rule: a request whose engine replica dies (or goes silent for `event_timeout_s`) is resubmitted with
the same seed, up to `retries` times, skipping the sentences the client already has (seeded synthesis gives
the same audio on any replica); then it fails cleanly (500 before any audio; an SSE error event, or a cut
connection for raw audio, after). Overload: the engine's queue or Serve's handle queue -> `QueueFull` -> 429.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np

from valle_export.errors import BadInput

from ..engine import Audio, Done, Failed, QueueFull
from ..server.app import ServerConfig, create_speech_app
from ..server.speaker import Refused
from ..server.voices import UnknownVoice
from ..synthesize import SynthesisSettings, TextInput
from .config import ScaleConfig


@dataclasses.dataclass
class IngressStats:
    """What this ingress replica relayed (`/metrics` on Ray; engine gauges are per replica, see README)."""

    done: int = 0
    failed: int = 0
    cancelled: int = 0
    rejected: int = 0
    retries: int = 0
    audio_seconds: float = 0.0
    first_audio_s: list = dataclasses.field(default_factory=list)


class RayStream:
    """One request's events from an engine replica, resubmitted on another when its replica dies."""

    def __init__(self, speaker: "RaySpeaker", args: tuple, seed: int):
        self.speaker, self.args, self.seed = speaker, args, seed
        self.headers: dict[str, str] = {}
        self.delivered = 0  # sentences handed to the client
        self.finished = False
        self.started = time.perf_counter()
        self._gen = None

    async def open(self) -> None:
        """Call an engine replica and read up to its "start"; raise `Refused` / `QueueFull` for a refusal."""
        from ray.serve.exceptions import BackPressureError

        attempts = 0
        while True:
            try:
                self._gen = self.speaker.engine.options(stream=True).speak.remote(*self.args, skip=self.delivered)
                tag = await self._pull()
                break
            except BackPressureError:
                self.speaker.stats.rejected += 1
                raise QueueFull(max(1, self.speaker.retry_after)) from None
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception:  # a dead or unreachable replica: Ray's errors vary by where it died
                attempts += 1
                if attempts > self.speaker.config.retries:
                    raise
                self.speaker.stats.retries += 1
        if tag[0] == "busy":
            self.speaker.stats.rejected += 1
            raise QueueFull(tag[1])
        if tag[0] == "refused":
            raise Refused(tag[1], tag[2])
        where = tag[1]
        self.headers = {"X-Served-By": where["node"], "X-Engine-Replica": where["replica"],
                        "X-Ingress-Replica": self.speaker.where.get("replica", "")}

    async def _pull(self):
        return await asyncio.wait_for(self._gen.__anext__(), self.speaker.config.event_timeout_s)

    async def next(self):
        retries = self.speaker.config.retries
        while True:
            try:
                tag = await self._pull()
            except asyncio.CancelledError:
                self.close()
                raise
            except Exception as err:  # StopAsyncIteration without "done" counts too: the replica went away
                if retries <= 0:
                    self.finished = True
                    self.speaker.stats.failed += 1
                    return Failed(f"engine replica lost ({type(err).__name__}); retries exhausted")
                retries -= 1
                self.speaker.stats.retries += 1
                try:
                    await self.open()
                except (QueueFull, Refused) as refusal:
                    self.finished = True
                    self.speaker.stats.failed += 1
                    return Failed(f"engine replica lost and the retry was refused: {refusal}")
                except Exception:
                    continue
                continue
            if tag[0] == "audio":
                _, index, audio, text = tag
                self.delivered = index + 1
                if index == 0:
                    self.speaker.stats.first_audio_s.append(time.perf_counter() - self.started)
                    del self.speaker.stats.first_audio_s[:-256]
                return Audio(index, audio, np.zeros((0, 0), dtype=np.int64), text)
            if tag[0] == "done":
                self.finished = True
                self.speaker.stats.done += 1
                self.speaker.stats.audio_seconds += tag[1].get("audio_s", 0.0)
                return Done(tag[1])
            if tag[0] == "failed":
                self.finished = True
                self.speaker.stats.failed += 1
                return Failed(tag[1])

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self.speaker.stats.cancelled += 1
            if self._gen is not None:
                self._gen.cancel()


class RaySpeaker:
    """Requests go to the engine deployment through a Serve handle (Serve picks the replica)."""

    def __init__(self, engine_handle, config: ScaleConfig, sample_rate: int, where: dict):
        self.engine, self.config, self.sample_rate, self.where = engine_handle, config, sample_rate, where
        self.stats = IngressStats()
        self.retry_after = 5

    async def start(self, text: TextInput, prompt, settings: SynthesisSettings) -> RayStream:
        if settings.seed is None:  # fixed here, so a resubmission after a replica death gives the same audio
            settings = dataclasses.replace(settings, seed=int(np.random.SeedSequence().entropy % (2**63)))
        stream = RayStream(self, (text, prompt, settings), settings.seed)
        await stream.open()
        return stream

    def warm_up(self) -> None:
        self.engine.info.remote().result()

    def status(self) -> dict:
        return {"backend": "ray", "ingress": self.where}

    def metrics(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s, replica = self.stats, self.where.get("replica", "")

        class Collector:
            def collect(self):
                info = GaugeMetricFamily("valle_ingress_info", "The ingress replica answering.", labels=["replica"])
                info.add_metric([replica], 1)
                yield info
                done = CounterMetricFamily("valle_requests", "Requests by outcome (this ingress).", labels=["outcome"])
                for outcome, n in (("done", s.done), ("failed", s.failed), ("cancelled", s.cancelled)):
                    done.add_metric([outcome], n)
                yield done
                yield CounterMetricFamily("valle_requests_rejected", "Requests refused with 429.", value=s.rejected)
                yield CounterMetricFamily("valle_engine_retries", "Resubmissions after an engine replica was lost.",
                                          value=s.retries)
                yield CounterMetricFamily("valle_audio_seconds", "Audio relayed.", value=s.audio_seconds)
                yield GaugeMetricFamily("valle_time_to_first_audio_seconds", "Mean over the last 256 requests.",
                                        value=float(np.mean(s.first_audio_s)) if s.first_audio_s else 0.0)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector())
        return generate_latest(registry)


class RemoteVoices:
    """`VoiceStore`'s methods over the registry deployment (blocking: the app calls them on a thread)."""

    def __init__(self, handle):
        self.handle = handle

    def _call(self, method: str, *args):
        tag, value = self.handle.call.remote(method, *args).result()
        if tag == "unknown":
            raise UnknownVoice(value)
        if tag == "bad":
            raise BadInput(value)
        return value

    def create(self, name: str, data: bytes, suffix: str) -> dict:
        return self._call("create", name, data, suffix)

    def list(self) -> list[dict]:
        return self._call("list")

    def get(self, voice_id: str) -> dict:
        return self._call("get", voice_id)

    def delete(self, voice_id: str) -> None:
        self._call("delete", voice_id)

    def prompt(self, voice_id: str):
        return self._call("prompt", voice_id)


class Ingress:
    """The ingress deployment's class: `serve.ingress()` wraps it; Serve calls `__serve_build_asgi_app__`
    after the constructor, so the app is the one-machine app over the handles given at bind time."""

    async def __init__(self, engine_handle, voices_handle, config: ScaleConfig):
        from .replicas import placement

        registry = await voices_handle.info.remote()
        self.speaker = RaySpeaker(engine_handle, config, registry["sample_rate"], placement())
        self.voices = RemoteVoices(voices_handle)
        self.config = config

    def __serve_build_asgi_app__(self):
        return create_speech_app(self.speaker, self.voices, ServerConfig(model_name=self.config.model_name))
