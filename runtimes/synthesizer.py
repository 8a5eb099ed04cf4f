"""The Python API: load a model and codec once, then speak many times (the original's `TTS` class).

    from runtimes.synthesizer import Synthesizer
    tts = Synthesizer.open("model/")                      # ONNX folder or .gguf; codec beside it
    voice = tts.voice(["ref.wav"])                         # or tts.load_voice("voice.npz")
    audio, rate = tts.speak(text="Hello there. How are you?", voice=voice, seed=0)

Long text is split (`split_text_by`), each piece synthesized and the audio concatenated; with
`context_history` N the previous N pieces' phonemes and level-0 codes prefix the next (sliced off), as the
original. The CLI's `synthesize` command is a thin layer over this class.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from valle_export.backend_options import DEFAULT_N_CTX
from valle_export import names
from valle_export.errors import BadInput
from valle_export.progress import Progress

from . import synthesize as synth
from . import text as text_frontend
from .pipeline import Context
from .text_split import split_text
from .voice import Voice, check_voice, encode_voice, load_voice


@dataclasses.dataclass
class Speech:
    """What one `speak` call produced: audio, its rate, per-piece codes, and a summary (timings, RTF)."""

    audio: np.ndarray
    sample_rate: int
    codes: list[np.ndarray]
    summary: dict


ROWS_TOGETHER = 4  # pieces of one text run together (AR KV: 4 x 12 s x 98 KB per position, fp32; a NAR-len
# demasking call holds 2 passes per piece, so its transient attention memory is 4x a single piece's)


class Synthesizer:
    def __init__(self, model: Path, backend, codec, tokenizer: str | None, config: dict,
                 progress: Progress | None = None):
        self.model, self.backend, self.codec = Path(model), backend, codec
        self.tokenizer = text_frontend.PhonemeTokenizer(tokenizer) if tokenizer else None
        self.config = config
        self.progress = progress or Progress(quiet=True)
        self.batch_sentences = True  # run independent pieces together where the backend batches

    @classmethod
    def open(cls, model: str | os.PathLike, backend: str = "auto", codec: str | os.PathLike | None = None,
             variant: str = "auto", threads: int = 0, kv_type: str = "f32", tokenizer: str | os.PathLike | None = None,
             progress: Progress | None = None, runner=None, decoder: str | None = None,
             n_ctx: int = DEFAULT_N_CTX, lora: str | os.PathLike | None = None) -> "Synthesizer":
        """Load once. `runner`: an already open backend (the CLI passes the torch reference this way, since
        no runtime module imports it). `decoder`: vocos or encodec (default: vocos when its graph is there).
        `lora`: an adapter GGUF applied by llama.cpp at run time."""
        model = Path(model)
        runner = runner or synth.open_backend(model, backend, threads, kv_type, n_ctx, variant=variant,
                                              lora=None if lora is None else Path(lora))
        found = synth.find_codec(model, Path(codec) if codec is not None else None, decoder)
        tok = synth.tokenizer_json(model, runner, Path(tokenizer) if tokenizer is not None else None)
        return cls(model, runner, found, tok, synth.source_config(model, runner), progress)

    # --- what a user should know -------------------------------------------------------------------------
    def warnings(self) -> list[str]:
        """One line per component with random (demo) weights: such audio is noise, whatever the settings."""
        out = []
        if str(self.config.get("name", "")).startswith(names.DEMO_NAME_PREFIX):
            out.append(synth.DEMO_WARNING.format(what=f"the model {self.model}"))
        if self.codec.random_weights:
            out.append(synth.DEMO_WARNING.format(what=f"the codec in {self.codec.folder}"))
        return out

    def modality(self, requested: str = "auto") -> str:
        return synth.resolve_modality(requested, self.backend.layout.capabilities, str(self.config.get("name", "")))

    # --- voices ------------------------------------------------------------------------------------------
    def voice(self, files: list[str | os.PathLike], prompt_seconds: float = 3.0) -> Voice:
        """Encode reference clips (any format soundfile reads) into a reusable voice."""
        return encode_voice(self.codec, list(files), prompt_seconds)

    def load_voice(self, path: str | os.PathLike) -> Voice:
        voice = load_voice(path)
        check_voice(voice, self.codec, path)
        return voice

    # --- text --------------------------------------------------------------------------------------------
    def pieces(self, inp: synth.TextInput, split_by: str) -> list[tuple[np.ndarray, int, str]]:
        """(phoneme ids, language token, piece) per piece of the input."""
        given = [x for x in (inp.text, inp.phonemes, inp.phoneme_ids) if x]
        if len(given) != 1:
            raise BadInput("give exactly one of --text, --phonemes, --phoneme-ids")
        lang = text_frontend.language_id(inp.language)
        if inp.phoneme_ids:
            vocab = self.backend.layout.table(names.TABLE_TEXT).rows
            return [(text_frontend.parse_ids(inp.phoneme_ids, vocab), lang, inp.phoneme_ids)]
        if self.tokenizer is None:
            raise BadInput("the model has no phoneme tokenizer (tokenizer.json); pass --tokenizer FILE or "
                           "--phoneme-ids", self.model)
        parts = split_text(inp.text or inp.phonemes, split_by)
        if not parts:
            raise BadInput("the text is empty")
        if inp.phonemes:
            return [(self.tokenizer.encode(p), lang, p) for p in parts]
        text_lang = inp.text_language or inp.language
        out = []
        for part in parts:
            spoken = text_frontend.detect_language(part) if text_lang == text_frontend.AUTO else text_lang
            out.append((self.tokenizer.encode(text_frontend.phonemize(part, spoken)), lang, part))
        return out

    # --- speaking ----------------------------------------------------------------------------------------
    def speak(self, text: str | None = None, phonemes: str | None = None, phoneme_ids: str | None = None,
              voice: Voice | str | os.PathLike | list | None = None, language: str = "en",
              text_language: str | None = None, settings: synth.SynthesisSettings | None = None,
              **overrides) -> tuple[np.ndarray, int]:
        """(mono float32 audio, sample rate). `overrides`: any SynthesisSettings field (seed=0, ...)."""
        speech = self.speak_detailed(synth.TextInput(text, phonemes, phoneme_ids, language, text_language),
                                     voice, settings, **overrides)
        return speech.audio, speech.sample_rate

    def _prompt(self, voice, prompt_seconds: float) -> np.ndarray | None:
        if voice is None:
            return None
        if isinstance(voice, Voice):
            check_voice(voice, self.codec)
            return voice.codes
        if isinstance(voice, (str, os.PathLike)) and Path(voice).suffix == ".npz":
            return self.load_voice(voice).codes
        files = [voice] if isinstance(voice, (str, os.PathLike)) else list(voice)
        return self.voice(files, prompt_seconds).codes

    def speak_detailed(self, inp: synth.TextInput, voice=None, settings: synth.SynthesisSettings | None = None,
                       **overrides) -> Speech:
        settings = dataclasses.replace(settings or synth.SynthesisSettings(), **overrides)
        settings = dataclasses.replace(settings, modality=self.modality(settings.modality))
        t = time.perf_counter()
        pieces = self.pieces(inp, settings.split_text_by)
        rngs = synth.piece_generators(settings.seed, len(pieces))
        timings = {"text_s": time.perf_counter() - t}
        t = time.perf_counter()
        if voice is not None:
            self.progress.stage("voice -> prompt codes")
        prompt = self._prompt(voice, settings.prompt_seconds)
        timings["prompt_s"] = time.perf_counter() - t
        audio, codes, phonemes = [], [], 0
        if self._runs_sentences_together(settings, len(pieces)):
            codes = self._codes_together(pieces, prompt, settings, rngs, timings)
            t = time.perf_counter()
            self.progress.stage(f"{self.codec.decoder.name} decode, {len(pieces)} pieces")
            audio = [synth.decode(self.codec, c) for c in codes]
            timings["decode_s"] = time.perf_counter() - t
            phonemes = sum(len(phn) for phn, _, _ in pieces)
        else:
            history = []
            for i, (phn, lang, piece) in enumerate(pieces, 1):
                if len(pieces) > 1:
                    self.progress.stage(f"piece {i}/{len(pieces)}: {piece[:60]}")
                context = _context(history, settings.context_history)
                wave, piece_codes, summary = synth.synthesize(self.backend, self.codec, phn, lang, prompt, settings,
                                                              self.progress, rngs[i - 1], context)
                audio.append(wave)
                codes.append(piece_codes)
                history.append((phn, piece_codes[:, 0]))
                phonemes += summary["phonemes"]
                for k, v in summary["timings_s"].items():
                    timings[k] = timings.get(k, 0.0) + v
        joined = np.concatenate(audio).astype(np.float32)
        return Speech(joined, self.codec.sample_rate, codes, self._summary(settings, codes, joined, timings, phonemes))

    def _runs_sentences_together(self, settings: synth.SynthesisSettings, pieces: int) -> bool:
        """Whether the pieces run as batches: independent TTS pieces (no context history) on a backend with
        batched passes. Each row draws from its own generator and its logits equal its run alone within
        contracts.BATCH_INVARIANT_REL, so the codes are the same either way; it is only faster (an AR step is
        weight-bound, and a full-pass call of several rows runs its GEMMs at larger, more efficient shapes)."""
        return (self.batch_sentences and pieces > 1 and settings.modality in ("ar+nar", "nar-len")
                and settings.task == "tts" and settings.context_history == 0 and hasattr(self.backend, "batch_hidden"))

    def _codes_together(self, pieces, prompt, settings: synth.SynthesisSettings, rngs: list[np.random.Generator],
                        timings: dict[str, float]) -> list[np.ndarray]:
        """Every piece's codes [frames, levels], up to ROWS_TOGETHER pieces at a time: their level 0 together
        (AR steps in one batch, or NAR-len's demasking steps in one call each), then each NAR level of them in
        one call. Adds the stage times to `timings`."""
        from .pipeline import Conditioning, NarRow, generate_nar_together

        out: list[np.ndarray] = []
        for first in range(0, len(pieces), ROWS_TOGETHER):
            chunk = range(first, min(first + ROWS_TOGETHER, len(pieces)))
            span = f"pieces {chunk.start + 1}-{chunk.stop} of {len(pieces)} together"
            conds = [Conditioning(pieces[i][0], pieces[i][1], prompt) for i in chunk]
            level0 = self._level0_together(conds, settings, [rngs[i] for i in chunk], span, timings)
            for codes0 in level0:
                synth.check_level0(codes0)
            t = time.perf_counter()
            self.progress.stage(f"NAR levels 1..{self.backend.layout.audio_levels - 1}, {span}")
            nar = [NarRow.after_level0(cond, codes0, settings.nar, rngs[i], settings.guidance)
                   for cond, codes0, i in zip(conds, level0, chunk)]
            generate_nar_together(self.backend, nar)
            timings["nar_s"] = timings.get("nar_s", 0.0) + time.perf_counter() - t
            out += [row.resp for row in nar]
        return out

    def _level0_together(self, conds: list, settings: synth.SynthesisSettings, rngs: list[np.random.Generator],
                         span: str, timings: dict[str, float]) -> list[np.ndarray]:
        """Level 0 of pieces together: AR rows stepping in one batch, or (NAR-len) each piece's len alone,
        then every demasking step of all of them in one call."""
        from .ar_batch import ArBatch, ArRow
        from .pipeline import demask_row, demask_together, generate_len

        layout, t = self.backend.layout, time.perf_counter()
        max_frames = settings.max_frames(layout.frame_rate)
        if settings.modality == "ar+nar":
            self.progress.stage(f"AR level 0, {span}")
            rows = [ArRow(cond, max_frames, settings.ar, rng, settings.guidance) for cond, rng in zip(conds, rngs)]
            batch = ArBatch(self.backend)
            batch.admit(rows)
            while len(batch):
                batch.step()
            timings["ar_s"] = timings.get("ar_s", 0.0) + time.perf_counter() - t
            return [row.result for row in rows]
        self.progress.stage(f"len, {span}")
        frames = [min(generate_len(self.backend, cond).frames, max_frames) for cond in conds]
        timings["len_s"] = timings.get("len_s", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        self.progress.stage(f"NAR-len demasking ({settings.demask_steps} steps), {span}")
        demask = [demask_row(layout, cond, n, settings.demask, rng) for cond, n, rng in zip(conds, frames, rngs)]
        demask_together(self.backend, demask)
        timings["demask_s"] = timings.get("demask_s", 0.0) + time.perf_counter() - t
        return [row.tokens for row in demask]

    def _summary(self, settings, codes, audio, timings, phonemes) -> dict:
        total, seconds = sum(timings.values()), len(audio) / self.codec.sample_rate
        return {"backend": self.backend.name, "exact": bool(getattr(self.backend, "exact", True)),
                "approximation": getattr(self.backend, "approximation", ""), "modality": settings.modality,
                "decoder": self.codec.decoder.name, "task": settings.task, "pieces": len(codes),
                "frames": int(sum(len(c) for c in codes)),
                "piece_frames": [int(len(c)) for c in codes], "audio_s": round(seconds, 3),
                "timings_s": {k: round(v, 4) for k, v in timings.items()}, "total_s": round(total, 4),
                "rtf": round(total / seconds, 4) if seconds else None, "phonemes": phonemes}


def _context(history: list[tuple[np.ndarray, np.ndarray]], n: int) -> Context | None:
    """The last `n` pieces as one prefix (the original's prefix_context), or None."""
    if n <= 0 or not history:
        return None
    recent = history[-n:]
    return Context(np.concatenate([p for p, _ in recent]), np.concatenate([c for _, c in recent]))
