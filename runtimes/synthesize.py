"""Text (+ optional prompt WAV) -> WAV on any backend: wires the text front end, the pipeline and the codec.

No torch unless the torch reference backend is asked for. Stages are timed for the JSON summary.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from valle_export.backend_options import DEFAULT_N_CTX, BackendOptions
from valle_export import graphs, names
from valle_export.errors import BadInput
from valle_export.progress import Progress

from .open import open_backend as open_any_backend
from . import text as text_frontend
from .codec import OnnxCodec
from .pipeline import (Conditioning, DemaskSettings, generate_ar, generate_len, generate_nar, demask_nar_len)
from .samplers import GREEDY, SamplerSettings

MODALITIES = ("ar+nar", "nar-len")


@dataclasses.dataclass(frozen=True)
class SynthesisSettings:
    modality: str = "ar+nar"
    max_duration: float = 12.0  # seconds (the original CLI's default)
    ar: SamplerSettings = SamplerSettings(temperature=1.0)
    nar: SamplerSettings = GREEDY
    demask: DemaskSettings = DemaskSettings()
    seed: int | None = None
    prompt_seconds: float = 3.0
    task: str = "tts"  # or ns / sr (names.TASK_IDS): the task row before the prompt, output as long as the prompt


@dataclasses.dataclass(frozen=True)
class TextInput:
    text: str | None = None
    phonemes: str | None = None
    phoneme_ids: str | None = None
    language: str = "en"


def open_backend(model: Path, kind: str = "auto", threads: int = 0, kv_type: str = "f32",
                 n_ctx: int = DEFAULT_N_CTX, lora: Path | None = None):
    """The synthesis runtime's way into `runtimes.open.open_backend` (one opener; the torch reference is
    opened by the CLI, the composition root: no runtime module imports reference_model). `lora`: an adapter
    GGUF applied by llama.cpp at run time."""
    return open_any_backend(model, kind, BackendOptions(threads=threads, n_ctx=n_ctx, kv_type=kv_type,
                                                        lora=None if lora is None else str(lora)))


def tokenizer_json(model: Path, backend) -> str | None:
    file = getattr(backend, "file", None)
    if file is not None and file.tokenizer:
        return file.tokenizer
    folder = model if model.is_dir() else model.parent
    path = folder / names.TOKENIZER_FILE
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput("not a tokenizers JSON (not UTF-8 text)", path) from None


def codec_folder(model: Path, codec_dir: Path | None) -> Path:
    """Where the codec graphs (EnCodec's, and Vocos's when exported) are read from: `--codec`, else the
    model's folder."""
    return codec_dir or (model if model.is_dir() else model.parent)


def default_decoder(folder: Path) -> str:
    """Vocos when its graph is there (the original decodes with Vocos), else EnCodec."""
    return "vocos" if (folder / graphs.VOCOS_DECODER_FILE).is_file() else "encodec"


def find_codec(model: Path, codec_dir: Path | None, decoder: str | None = None) -> OnnxCodec:
    folder = codec_folder(model, codec_dir)
    if not (folder / graphs.CODEC_ENCODER_FILE).is_file():
        raise BadInput(f"no EnCodec graphs here; export them with `valle-export encodec {folder}` or pass --codec",
                       folder)
    decoder = decoder or default_decoder(folder)
    if decoder == "vocos" and not (folder / graphs.VOCOS_DECODER_FILE).is_file():
        raise BadInput(f"no {graphs.VOCOS_DECODER_FILE} here for --decoder vocos; export it with "
                       f"`valle-export vocos -o {folder}`", folder)
    return OnnxCodec(folder, decoder=decoder)


def phoneme_ids(inp: TextInput, model: Path, backend) -> np.ndarray:
    given = [x for x in (inp.text, inp.phonemes, inp.phoneme_ids) if x]
    if len(given) != 1:
        raise BadInput("give exactly one of --text, --phonemes, --phoneme-ids")
    if inp.phoneme_ids:
        return text_frontend.parse_ids(inp.phoneme_ids, backend.layout.table(names.TABLE_TEXT).rows)
    tok = tokenizer_json(model, backend)
    if tok is None:
        raise BadInput("the model has no phoneme tokenizer (tokenizer.json); pass --phoneme-ids", model)
    phonemes = inp.phonemes or text_frontend.phonemize(inp.text, inp.language)
    return text_frontend.PhonemeTokenizer(tok).encode(phonemes)


def _pad_for_decoder(codes: np.ndarray, minimum: int) -> np.ndarray:
    """Repeat the last frame up to the decoder's minimum length (the extra audio is cut afterwards)."""
    if len(codes) >= minimum:
        return codes
    return np.concatenate([codes, np.repeat(codes[-1:], minimum - len(codes), axis=0)])


def synthesize(backend, codec: OnnxCodec, inp: TextInput, model: Path, prompt_wav: Path | None,
               settings: SynthesisSettings, progress: Progress) -> tuple[np.ndarray, np.ndarray, dict]:
    """Returns (audio [samples], codes [frames, levels], summary)."""
    if settings.modality not in MODALITIES:
        raise BadInput(f"--modality must be one of {', '.join(MODALITIES)}")
    timings, t = {}, time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    lang = text_frontend.language_id(inp.language)  # first: an unknown language is not an espeak-ng problem
    progress.stage("text -> phoneme ids")
    phn = phoneme_ids(inp, model, backend)
    timings["text_s"] = time.perf_counter() - t
    t = time.perf_counter()
    prompt = None
    if prompt_wav is not None:
        progress.stage(f"prompt {prompt_wav} -> codes")
        prompt = codec.prompt_codes(prompt_wav, settings.prompt_seconds)
    timings["prompt_s"] = time.perf_counter() - t
    task = names.TASK_IDS.get(settings.task)
    if settings.task != "tts" and (task is None or prompt is None):
        raise BadInput(f"--task {settings.task} works on the prompt's audio: give --prompt" if task is not None
                       else f"unknown task {settings.task!r} (tts, {', '.join(names.TASK_IDS)})")
    cond = Conditioning(phn, lang, prompt, task)
    max_frames = int(settings.max_duration * backend.layout.frame_rate)
    t = time.perf_counter()
    if settings.modality == "ar+nar":
        progress.stage("AR level 0")
        codes0 = generate_ar(backend, cond, max_frames, settings.ar, rng)
        timings["ar_s"] = time.perf_counter() - t
    else:
        if task is None:
            progress.stage("len")
            frames = min(generate_len(backend, cond).frames, max_frames)
        else:  # the original's ns / sr: the output is as long as the prompt
            frames = len(prompt)
        timings["len_s"] = time.perf_counter() - t
        t = time.perf_counter()
        progress.stage(f"NAR-len demasking ({settings.demask.steps} steps, {frames} frames)")
        codes0, _ = demask_nar_len(backend, cond, frames, settings.demask, rng)
        timings["demask_s"] = time.perf_counter() - t
    if len(codes0) == 0:
        raise BadInput("the model stopped before producing any frame (try another seed or a prompt)")
    t = time.perf_counter()
    progress.stage(f"NAR levels 1..{backend.layout.audio_levels - 1} ({len(codes0)} frames)")
    codes = generate_nar(backend, cond, codes0, settings.nar, rng)
    timings["nar_s"] = time.perf_counter() - t
    t = time.perf_counter()
    progress.stage(f"{codec.decoder.name} decode")
    audio = codec.decode(_pad_for_decoder(codes, codec.decoder.min_frames).T)[: len(codes) * codec.hop]
    timings["decode_s"] = time.perf_counter() - t
    total = sum(timings.values())
    seconds = len(audio) / codec.sample_rate
    summary = {"backend": backend.name, "task": settings.task, "exact": bool(getattr(backend, "exact", True)),
               "approximation": getattr(backend, "approximation", ""), "modality": settings.modality,
               "decoder": codec.decoder.name,
               "frames": int(len(codes)), "audio_s": round(seconds, 3),
               "timings_s": {k: round(v, 4) for k, v in timings.items()}, "total_s": round(total, 4),
               "rtf": round(total / seconds, 4) if seconds else None, "phonemes": int(len(phn))}
    return audio, codes, summary
