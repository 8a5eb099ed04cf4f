"""The body of `POST /v1/audio/speech`: OpenAI's fields, then the synthesis settings of the CLI as extra
fields (reachable through the openai SDK's `extra_body`), range-checked with the CLI's bounds."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from valle_export import options as opt

from ..samplers import SamplerSettings
from ..synthesize import SynthesisSettings

MAX_INPUT = 4096


class VoiceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200)


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=200)
    input: str = Field(min_length=1, max_length=MAX_INPUT)
    voice: str | VoiceRef
    instructions: str | None = Field(None, max_length=MAX_INPUT)  # accepted and ignored (as OpenAI's tts-1)
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = 1.0
    stream_format: Literal["audio", "sse"] = "audio"
    # --- valle-export extensions: the `synthesize` options --------------------------------------------------
    seed: int | None = Field(None, ge=0, le=opt.MAX_SEED)
    language: str = Field("en", max_length=16)
    text_language: str | None = Field(None, max_length=16)
    phonemes: bool = False  # `input` is IPA (no espeak-ng)
    modality: Literal["auto", "ar+nar", "nar-len"] = "auto"
    max_duration: float = Field(12.0, ge=opt.MIN_DURATION_S, le=opt.MAX_DURATION_S)
    split_text_by: str = Field("sentences", min_length=1, max_length=16)
    ar_temperature: float = Field(1.0, ge=0.0, le=100.0)
    nar_temperature: float = Field(0.0, ge=0.0, le=100.0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    top_no: float = Field(0.0, ge=0.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    repetition_penalty_decay: float = 0.0
    length_penalty: float = 0.0
    dry_multiplier: float = Field(0.0, ge=0.0)
    dry_base: float = Field(1.75, gt=0.0)
    dry_allowed_length: int = Field(2, ge=1, le=opt.MAX_DRY_LENGTH)
    demask_steps: int = Field(25, ge=1, le=opt.MAX_DEMASK_STEPS)
    cfg_strength: float = Field(0.0, ge=0.0)
    cfg_rescale: float = Field(0.75, ge=0.0, le=1.0)

    @property
    def voice_id(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice.id

    def settings(self) -> SynthesisSettings:
        """The same mapping as the CLI's `synthesize` options."""
        shared = dict(top_k=self.top_k, top_p=self.top_p, min_p=self.min_p, top_no=self.top_no,
                      repetition_penalty=self.repetition_penalty, repetition_decay=self.repetition_penalty_decay,
                      dry_multiplier=self.dry_multiplier, dry_base=self.dry_base,
                      dry_allowed_length=self.dry_allowed_length)
        return SynthesisSettings(
            modality=self.modality, max_duration=self.max_duration, demask_steps=self.demask_steps,
            cfg_strength=self.cfg_strength, cfg_rescale=self.cfg_rescale, seed=self.seed,
            split_text_by=self.split_text_by,
            ar=SamplerSettings(temperature=self.ar_temperature, length_penalty=self.length_penalty, **shared),
            nar=SamplerSettings(temperature=self.nar_temperature, **shared))
