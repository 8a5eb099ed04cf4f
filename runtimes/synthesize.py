"""One piece of text (phoneme ids) + optional prompt codes -> audio on any backend: the pipeline and the codec.

No torch unless the torch reference backend is asked for. Stages are timed for the JSON summary. The text
front end, voices and long text live in `runtimes.synthesizer` (the API the CLI uses).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from valle_export.backend_options import (DEFAULT_N_CTX, FAST_PAIR, FAST_PRESET, ONNX_VARIANTS, BackendOptions,
                                         split_variant)
from valle_export import graphs, names
from valle_export.errors import BadInput
from valle_export.progress import Progress

from .open import HYBRID, detect_kind, open_backend as open_any_backend
from .codec import OnnxCodec
from .pipeline import (Conditioning, Context, DemaskSettings, Guidance, generate_ar, generate_len, generate_nar,
                       demask_nar_len)
from .samplers import GREEDY, SamplerSettings

MODALITIES = ("auto", "ar+nar", "nar-len")
VARIANTS = ("auto", *ONNX_VARIANTS)
DEMO_WARNING = "warning: {what} has random (demo) weights: the audio is noise, not speech"


@dataclasses.dataclass(frozen=True)
class SynthesisSettings:
    """Everything a user may set per call, with the original's documented CLI defaults (design section 1)."""

    modality: str = "auto"  # auto: NAR-len for a model with the `len` capability, else AR+NAR (the original)
    max_duration: float = 12.0  # seconds (the original CLI's default)
    ar: SamplerSettings = SamplerSettings(temperature=1.0)  # AR steps, and NAR-len demasking (annealed T)
    nar: SamplerSettings = GREEDY
    demask_steps: int = 25
    cfg_strength: float = 0.0  # AR and NAR levels; NAR-len uses max(this, 2.5)
    cfg_rescale: float = 0.75
    seed: int | None = None
    prompt_seconds: float = 3.0  # 0 = the whole clip
    split_text_by: str = "sentences"
    context_history: int = 0
    task: str = "tts"  # or ns / sr (names.TASK_IDS): the task row before the prompt, output as long as the prompt

    def max_frames(self, frame_rate: float) -> int:
        """The AR frame cap `max_duration` allows (every path that generates level 0 stops here)."""
        return int(self.max_duration * frame_rate)

    @property
    def guidance(self) -> Guidance:
        return Guidance(self.cfg_strength, self.cfg_rescale)

    @property
    def demask(self) -> DemaskSettings:
        return DemaskSettings(self.demask_steps, self.cfg_strength, self.cfg_rescale, self.ar)


@dataclasses.dataclass(frozen=True)
class TextInput:
    text: str | None = None
    phonemes: str | None = None
    phoneme_ids: str | None = None
    language: str = "en"
    text_language: str | None = None  # None: the same as `language`


def source_config(model: Path, backend) -> dict:
    """The native config the model was exported from (name, capabilities): in the GGUF, beside the ONNX
    graphs, or in a checkpoint's safetensors metadata. {} when none is found."""
    file = getattr(backend, "file", None)
    if file is not None and getattr(file, "source_config", None):
        return file.source_config
    model = Path(model)
    folder = model if model.is_dir() else model.parent
    if (folder / names.SOURCE_CONFIG_FILE).is_file():
        return json.loads((folder / names.SOURCE_CONFIG_FILE).read_text(encoding="utf-8"))
    sft = model if model.suffix == ".sft" else folder / names.CHECKPOINT_SFT
    if sft.is_file():
        from valle_export.files import read_safetensors_header

        meta = read_safetensors_header(sft).get("__metadata__", {})
        return json.loads(meta.get(names.META_CONFIG, "{}"))
    return {}


def resolve_modality(modality: str, capabilities: tuple[str, ...], model_name: str = "") -> str:
    """The original's `auto`: the model's name when it is a modality, else NAR-len with `len`, else AR+NAR."""
    if modality not in MODALITIES:
        raise BadInput(f"--modality must be one of {', '.join(MODALITIES)}")
    if modality == "auto":
        if model_name in MODALITIES[1:]:
            return model_name
        return "nar-len" if "len" in capabilities else "ar+nar"
    if modality == "nar-len" and "len" not in capabilities:
        raise BadInput(f"the model has no `len` capability (it has {', '.join(capabilities)}); use --modality ar+nar")
    return modality


def pick_variant(model: Path, variant: str) -> str:
    """An ONNX folder's variant: one of ONNX_VARIANTS, `fast`, or STEP+BACKBONE (backend_options); `auto`
    takes the first exported backbone of fp32, fp16, int8, q8_0, q4_0, q4_128, w8a8 (the most exact first), as
    `fast` when that backbone is w8a8 without its own step graph but with fast's (an `--outtype fast` folder)."""
    if variant != "auto":
        try:
            split_variant(variant)
        except BadInput as err:
            raise BadInput(f"--variant: {err.problem}") from None
        return variant
    folder = Path(model)
    for v in VARIANTS[1:]:
        if (folder / graphs.backbone_file(v)).is_file():
            fast_step, fast_backbone = FAST_PAIR
            if (v == fast_backbone and not (folder / graphs.step_file(v)).is_file()
                    and (folder / graphs.step_file(fast_step)).is_file()):
                return FAST_PRESET
            return v
    raise BadInput("not an exported model (a folder with backbone.onnx, or a .gguf file)", model)


def open_backend(model: Path, kind: str = "auto", threads: int = 0, kv_type: str = "f32",
                 n_ctx: int = DEFAULT_N_CTX, variant: str = "auto", lora: Path | None = None):
    """The synthesis runtime's way into `runtimes.open.open_backend` (one opener), with the ONNX variant picked
    from what was exported. The torch reference is opened by the CLI, the composition root. `lora`: an adapter
    GGUF applied by llama.cpp at run time."""
    model = Path(model)
    kind = detect_kind(model) if kind == "auto" else kind
    onnx_part = kind in ("onnx", HYBRID)
    if variant != "auto" and not onnx_part:
        raise BadInput(f"--variant selects an ONNX graph; {kind} reads its weight type from the file", model)
    chosen = pick_variant(model, variant) if onnx_part else "fp32"
    return open_any_backend(model, kind, BackendOptions(threads=threads, n_ctx=n_ctx, kv_type=kv_type,
                                                        variant=chosen, lora=None if lora is None else str(lora)))


def tokenizer_json(model: Path, backend, explicit: Path | None = None) -> str | None:
    """`--tokenizer FILE`, else the one stored in the GGUF, else tokenizer.json beside the model."""
    if explicit is not None:
        return _read_tokenizer(Path(explicit))
    file = getattr(backend, "file", None)
    if file is not None and file.tokenizer:
        return file.tokenizer
    folder = model if model.is_dir() else model.parent
    path = folder / names.TOKENIZER_FILE
    return _read_tokenizer(path) if path.is_file() else None


def _read_tokenizer(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput("file not found", path) from None
    except IsADirectoryError:
        raise BadInput("is a folder, not a tokenizer JSON", path) from None
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


def _pad_for_decoder(codes: np.ndarray, minimum: int) -> np.ndarray:
    """Repeat the last frame up to the decoder's minimum length (the extra audio is cut afterwards)."""
    if len(codes) >= minimum:
        return codes
    return np.concatenate([codes, np.repeat(codes[-1:], minimum - len(codes), axis=0)])


def piece_generators(seed: int | None, pieces: int) -> list[np.random.Generator]:
    """The seeding rule, one for the CLI, the Python API and the server: piece i of a text with seed s draws
    from `default_rng([s, i])`, its AR steps then its NAR levels, so a piece's audio depends on its own seed
    and position only (pieces can run together or apart, under any load, and give the same audio)."""
    return [np.random.default_rng(None if seed is None else [seed, i]) for i in range(pieces)]


def check_level0(codes0: np.ndarray) -> None:
    """Refuse a piece whose level 0 is empty: there is nothing for the NAR levels or the decoder."""
    if len(codes0) == 0:
        raise BadInput("the model stopped before producing any frame (try another seed or a prompt)")


def decode(codec: OnnxCodec, codes: np.ndarray) -> np.ndarray:
    """A piece's audio [samples] from its codes [frames, levels] (padded up to the decoder's minimum, cut back)."""
    return codec.decode(_pad_for_decoder(codes, codec.decoder.min_frames).T)[: len(codes) * codec.hop]


def synthesize(backend, codec: OnnxCodec, phn: np.ndarray, lang: int, prompt: np.ndarray | None,
               settings: SynthesisSettings, progress: Progress, rng: np.random.Generator,
               context: Context | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """One piece: returns (audio [samples], codes [frames, levels], summary). `settings.modality` must be
    resolved (not `auto`); `context` holds earlier pieces (level 0 only, sliced off)."""

    timings = {}
    task = names.TASK_IDS.get(settings.task)
    if settings.task != "tts" and (task is None or prompt is None):
        raise BadInput(f"--task {settings.task} works on the prompt's audio: give --prompt" if task is not None
                       else f"unknown task {settings.task!r} (tts, {', '.join(names.TASK_IDS)})")
    cond = Conditioning(phn, lang, prompt, context=context, task=task)
    max_frames = settings.max_frames(backend.layout.frame_rate)
    t = time.perf_counter()
    if settings.modality == "ar+nar":
        progress.stage("AR level 0")
        codes0 = generate_ar(backend, cond, max_frames, settings.ar, rng, guidance=settings.guidance)
        timings["ar_s"] = time.perf_counter() - t
    else:
        if task is None:
            progress.stage("len")
            frames = min(generate_len(backend, cond).frames, max_frames)
        else:  # the original's ns / sr: the output is as long as the prompt
            frames = len(prompt)
        timings["len_s"] = time.perf_counter() - t
        t = time.perf_counter()
        progress.stage(f"NAR-len demasking ({settings.demask_steps} steps, {frames} frames)")
        codes0, _ = demask_nar_len(backend, cond, frames, settings.demask, rng)
        timings["demask_s"] = time.perf_counter() - t
    check_level0(codes0)
    t = time.perf_counter()
    progress.stage(f"NAR levels 1..{backend.layout.audio_levels - 1} ({len(codes0)} frames)")
    codes = generate_nar(backend, cond, codes0, settings.nar, rng, settings.guidance)
    timings["nar_s"] = time.perf_counter() - t
    t = time.perf_counter()
    progress.stage(f"{codec.decoder.name} decode")
    audio = decode(codec, codes)
    timings["decode_s"] = time.perf_counter() - t
    summary = {"task": settings.task, "frames": int(len(codes)), "phonemes": int(len(phn)), "timings_s": timings}
    return audio, codes, summary
