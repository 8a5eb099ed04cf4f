"""The `valle-export` command line. Each command parses options, calls one library function, and maps
`ValleExportError` to one line on stderr with exit code 2. Heavy modules (torch) are imported inside the
commands that need them, so the runtime commands never import torch."""
from __future__ import annotations

import contextlib
import functools
import signal
import sys
from pathlib import Path

import click

from . import __version__, names, options as opt
from .backend_options import (DEFAULT_N_CTX, KV_TYPES, ONNX_OUTTYPES, ONNX_VARIANTS, RUNTIME_BACKENDS, BackendOptions,
                              split_variant)
from .errors import PENDING_SIGNALS, BadInput, Interrupted, ValleExportError
from .extras import missing_extra
from .paths import FolderKind, check_output
from .progress import Progress


def _fail(problem: str, code: int = 2):
    """Print `error: <problem>` as exactly one line on stderr and exit."""
    click.echo("error: " + " ".join(str(problem).split("\n")), err=True)
    sys.exit(code)


def _one_line_errors(fn):
    """Turn a `ValleExportError`, a missing optional dependency or an OS error into one line
    `error: <file>: <problem>` and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValleExportError as err:
            _fail(str(err))
        except ImportError as err:
            message = missing_extra(err)
            if message is None:
                raise
            _fail(message)
        except OSError as err:
            where = f"{err.filename}: " if err.filename is not None else ""
            _fail(f"{where}{err.strerror or err}")

    return wrapper


def _torch_backend(model: Path):
    """The torch reference as a backend (the CLI is the one place that composes reference and runtime)."""
    from reference_model.backend import TorchBackend
    from reference_model.load import load_reference

    return TorchBackend(load_reference(model))


def _load_model(model: Path, lora: Path | None, progress: Progress):
    """The reference model of MODEL with the adapter LORA merged (the one place exports load a model)."""
    from reference_model.load import load_reference

    ref = load_reference(model, lora)
    if ref.lora is not None:
        progress.stage(f"adapter merged: {ref.lora.describe()}")
    return ref


def _raise_interrupted(signum, frame) -> None:
    """Signal handler: ignore further signals (so cleanup finishes), then unwind."""
    for sig in _CLEANUP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    PENDING_SIGNALS.append(signum)  # checked again before any atomic write commits
    raise Interrupted(signum)


_CLEANUP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


def _quiet_unraisable(unraisable) -> None:
    """An interrupt that lands inside a `__del__` cannot unwind (Python prints it as "Exception ignored" with
    a traceback): it is already in PENDING_SIGNALS, so the command still cancels before it commits anything and
    exits with the signal's code; say nothing more here."""
    if isinstance(unraisable.exc_value, Interrupted):
        return
    sys.__unraisablehook__(unraisable)


@contextlib.contextmanager
def _cleanup_on_signals():
    """Install `_raise_interrupted` for SIGTERM and SIGHUP (main thread only), restoring the old handlers."""
    try:
        old = {sig: signal.signal(sig, _raise_interrupted) for sig in _CLEANUP_SIGNALS}
    except ValueError:  # not the main thread: leave signals alone
        old = {}
    old_hook, sys.unraisablehook = sys.unraisablehook, _quiet_unraisable
    try:
        yield
    finally:
        sys.unraisablehook = old_hook
        for sig, handler in old.items():
            signal.signal(sig, handler)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class OneLineGroup(click.Group):
    """click's usage errors (bad choice, unknown option, missing argument, bad number) as one
    `error: ...` line with exit code 2, like every other error; interrupts clean up their temp files."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            with _cleanup_on_signals():
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as err:  # bare `valle-export`: the help, as click shows it
            click.echo(err.format_message(), err=True)
            sys.exit(2)
        except click.ClickException as err:
            _fail(err.format_message(), 2 if err.exit_code in (1, 2) else err.exit_code)
        except click.Abort:
            _fail("aborted", 1)
        except Interrupted as err:
            _fail(f"interrupted by {err}; temporary files removed", 128 + err.signum)
        sys.exit(code if isinstance(code, int) else 0)


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress output.")
output_option = click.option("-o", "--output", "output", type=opt.OUTPUT, default=None,
                             help="Where to write (the same as the positional OUT).")


def _output(positional: Path | None, option: Path | None, what: str = "OUT_DIR") -> Path:
    """Every writer takes `-o/--output`; the older positional form still works. One of them, once."""
    if positional is not None and option is not None and positional != option:
        raise BadInput(f"give the output once: {what} or -o/--output")
    out = option if option is not None else positional
    if out is None:
        raise BadInput(f"missing the output: -o/--output (or {what})")
    return out
threads_option = click.option("--threads", type=opt.THREADS, default=0, show_default=True,
                              help="CPU threads of the backend (0 = every core).")
n_ctx_option = click.option("--n-ctx", type=opt.N_CTX, default=DEFAULT_N_CTX, show_default=True,
                            help="Positions one pass may hold (llama.cpp and ggml context).")
lora_option = click.option("--lora", type=click.Path(path_type=Path), default=None,
                           help="Merge this adapter (the original's lora.sft) into the exported weights: "
                                "W + (alpha/rank) B A on q, v, o, gate, up, down.")
# Existing folders each export refuses to write into (an export never lands in a checkpoint folder).
_NOT_FOR_UNIFORM = (FolderKind.CHECKPOINT, FolderKind.ONNX, FolderKind.CODEC, FolderKind.HF_CODEC)
_NOT_FOR_ONNX = (FolderKind.CHECKPOINT, FolderKind.UNIFORM, FolderKind.HF_CODEC)
_NOT_FOR_CHECKPOINT = (FolderKind.UNIFORM, FolderKind.ONNX, FolderKind.CODEC, FolderKind.HF_CODEC)


def _variant_word(ctx, param, value: str) -> str:
    """--variant checked at parse time (one usage line before any work): auto, a variant, fast, or a pair."""
    if value != "auto":
        try:
            split_variant(value)
        except BadInput as err:
            raise click.BadParameter(err.problem) from None
    return value


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, package_name="valle-export")
def main() -> None:
    """Export VALL-E checkpoints to portable formats and run them without the training stack."""


@main.command("convert")
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.argument("out_dir", type=opt.OUTPUT, required=False)
@output_option
@lora_option
@quiet_option
@_one_line_errors
def convert_cmd(ckpt: Path, out_dir: Path | None, output: Path | None, lora: Path | None, quiet: bool) -> None:
    """Write the uniform-ID HF folder (LlamaForCausalLM + layout + head biases) of CKPT to OUT_DIR."""
    out_dir = _output(out_dir, output)
    check_output(out_dir, [ckpt, lora], folder=True, refused_kinds=_NOT_FOR_UNIFORM)
    progress = Progress(quiet)
    progress.stage(f"loading {ckpt}")
    from reference_model.hf_folder import save_uniform_folder
    from reference_model.load import tokenizer_beside

    model = _load_model(ckpt, lora, progress)
    progress.stage(f"writing {out_dir} (vocab {model.layout.vocab_size}, {model.cfg.n_layers} layers)")
    save_uniform_folder(model, out_dir, tokenizer_beside(ckpt))
    progress.stage("done")


@main.command("demo-checkpoint")
@click.argument("out", type=opt.OUTPUT, required=False)
@output_option
@click.option("--size", type=click.Choice(["tiny", "full"]), default="tiny", show_default=True)
@click.option("--seed", type=opt.SEED, default=0, show_default=True)
@click.option("--hidden-act", type=click.Choice(["gelu", "silu"]), default="gelu", show_default=True)
@click.option("--positions", type=click.Choice([names.POSITIONS_SEGMENTED, names.POSITIONS_UNIFIED]),
              default=names.POSITIONS_SEGMENTED, show_default=True)
@click.option("--masks", type=click.Choice(["noncausal", "causal"]), default="noncausal", show_default=True,
              help="noncausal: NAR passes attend bidirectionally (released models); causal: every pass causal.")
@click.option("--capabilities", default="ar,nar,len", show_default=True)
@quiet_option
@_one_line_errors
def demo_checkpoint_cmd(out: Path | None, output: Path | None, size: str, seed: int, hidden_act: str, positions: str,
                        masks: str, capabilities: str, quiet: bool) -> None:
    """Write a seeded random-weight native checkpoint (OUT/fp32.sft); `--size full` is the released shape."""
    out = _output(out, output, "OUT")

    check_output(out, folder=True, refused_kinds=_NOT_FOR_CHECKPOINT)
    caps = tuple(c.strip() for c in capabilities.split(",") if c.strip())
    unknown = sorted(set(caps) - {"ar", "nar", "len"})
    if unknown or not caps:
        raise BadInput(f"--capabilities: unknown capability {', '.join(unknown) or '(empty)'} (ar, nar, len)")
    progress = Progress(quiet)
    progress.stage(f"drawing {size} weights (seed {seed})")
    from reference_model.demo import DemoSpec, write_demo_checkpoint

    spec = DemoSpec(size, seed, hidden_act, positions, masks == "noncausal", caps)
    path = write_demo_checkpoint(out, spec)
    progress.stage(f"wrote {path}")


@main.command("onnx")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("out_dir", type=opt.OUTPUT, required=False)
@output_option
@click.option("--opset", type=opt.OPSET, default=23, show_default=True)
@click.option("--outtype", type=click.Choice(list(ONNX_OUTTYPES)), default=None,
              help="f32 (default), f16 (weights and compute; inputs and outputs stay float32), int8 (dynamic "
                   "int8 MatMul weights, from the f32 graph), q8_0 / q4_0 (weight-only blocks of 32, MatMulNBits), "
                   "q4_128 (4-bit blocks of 128: the fastest AR steps), w8a8 (int8 weights and per-row int8 "
                   "activations: the fastest NAR), or fast (ar_step.q4_128.onnx + backbone.w8a8.onnx: the "
                   "fastest pair, run with synthesize --variant fast). All but int8 are batch-invariant. The same "
                   "words as gguf --outtype where they exist.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default=None, hidden=True)  # older spelling
@click.option("--quantize", type=click.Choice(["int8"]), default=None, hidden=True)  # older spelling
@lora_option
@quiet_option
@_one_line_errors
def onnx_cmd(model: Path, out_dir: Path | None, output: Path | None, opset: int, outtype: str | None,
             dtype: str | None, quantize: str | None, lora: Path | None, quiet: bool) -> None:
    """Export MODEL (native checkpoint or uniform folder) to ONNX in OUT_DIR, verified against the reference."""
    out_dir = _output(out_dir, output)
    if outtype is not None:
        if dtype is not None or quantize is not None:
            raise BadInput("give --outtype alone (--dtype / --quantize are its older spelling)")
        dtype, quantize = ONNX_OUTTYPES[outtype]
    dtype = dtype or "fp32"
    check_output(out_dir, [model, lora], folder=True, refused_kinds=_NOT_FOR_ONNX)
    progress = Progress(quiet)
    progress.stage(f"loading {model}")
    from converters.onnx_export import export_onnx
    from reference_model.load import tokenizer_beside

    ref = _load_model(model, lora, progress)
    path = export_onnx(ref, out_dir, opset, dtype, quantize, progress, tokenizer_beside(model))
    progress.stage(f"wrote {path}")


@main.command("gguf")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=opt.OUTPUT, default=None,
              help="Output file (default: <model>.<outtype>.gguf beside the checkpoint).")
@click.option("--outtype", type=click.Choice(["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"]),
              default="f16", show_default=True)
@click.option("--arch", type=click.Choice(["gemma", "qwen2vl", "llama"]), default=None,
              help="Default: gemma for GELU models, qwen2vl for SiLU models; llama for SiLU + unified positions.")
@lora_option
@quiet_option
@_one_line_errors
def gguf_cmd(model: Path, out: Path | None, outtype: str, arch: str | None, lora: Path | None, quiet: bool) -> None:
    """Write MODEL (native checkpoint or uniform folder) as a GGUF for stock llama.cpp, verified on read-back."""
    if out is None:
        base = model if model.is_dir() else model.parent
        out = base / f"{base.name}.{outtype}.gguf"
    check_output(out, [model, lora])
    progress = Progress(quiet)
    progress.stage(f"loading {model}")
    from converters.gguf_export import export_gguf
    from reference_model.load import tokenizer_beside

    ref = _load_model(model, lora, progress)
    tok = tokenizer_beside(model)
    report = export_gguf(ref, out, outtype, arch, tok.read_text() if tok else None, progress)
    progress.stage(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, arch {report['arch']})")
    from .exactness import report_lines

    for line in report_lines(report["exactness"]):
        progress.stage(f"  stock llama.cpp (F32 KV), {line}")


@main.command("gguf-lora")
@click.argument("lora", type=click.Path(path_type=Path))
@click.option("--base", "base", type=click.Path(path_type=Path), required=True,
              help="The base GGUF (written by `valle-export gguf` without --lora) the adapter is for.")
@click.option("-o", "--output", "out", type=opt.OUTPUT, required=True, help="The adapter GGUF to write.")
@quiet_option
@_one_line_errors
def gguf_lora_cmd(lora: Path, base: Path, out: Path, quiet: bool) -> None:
    """Write LORA (the original's lora.sft) as a llama.cpp LoRA adapter GGUF for BASE: load it at run time with
    `synthesize BASE --lora OUT` (stock llama.cpp's llama_adapter_lora_init), one base for many voices."""
    check_output(out, [lora, base])
    progress = Progress(quiet)
    progress.stage(f"reading {lora} for {base}")
    from converters.gguf_lora import write_gguf_lora

    report = write_gguf_lora(lora, base, out)
    progress.stage(f"wrote {out} (arch {report['arch']}, {report['tensors']} tensors, adapter "
                   f"{report['record'].describe()})")


@main.command("synthesize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--text", default=None, help="Text to speak (needs espeak-ng); long text is split into pieces.")
@click.option("--phonemes", default=None, help="IPA phonemes instead of text (no espeak-ng needed).")
@click.option("--phoneme-ids", default=None, help="Raw phoneme token ids, comma separated.")
@click.option("--lang", default="en", show_default=True,
              help="Language token (en ja de fr zh ko; any other, auto included, is token 0 as the original).")
@click.option("--text-language", default=None,
              help="Phonemizer language (default: --lang); `auto` detects it per piece (langdetect).")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="Phoneme tokenizer JSON (default: the one in the GGUF, or tokenizer.json beside MODEL).")
@click.option("--prompt", type=click.Path(path_type=Path), multiple=True,
              help="Reference clip (WAV, FLAC, OGG, ...); repeat for several, their codes are concatenated.")
@click.option("--prompt-seconds", type=opt.PROMPT_SECONDS, default=3.0, show_default=True,
              help="Repeat or trim the prompt to this length; 0 = the whole clips.")
@click.option("--voice", type=click.Path(path_type=Path), default=None,
              help="A voice file from `valle-export voice` (instead of --prompt; no encoder run).")
@click.option("-o", "--output", "--out", "out", type=opt.OUTPUT, default=Path("out.wav"), show_default=True)
@click.option("--format", "fmt", type=click.Choice(list(names.AUDIO_FORMATS)), default=None,
              help="Output format (default: from --out's extension, else wav).")
@click.option("--float-wav/--pcm16-wav", default=True, show_default=True,
              help="WAV samples: 32-bit float (the original's) or 16-bit PCM.")
@click.option("--backend", type=click.Choice(["auto", *RUNTIME_BACKENDS, "torch"]), default="auto",
              show_default=True,
              help="auto: onnx for a folder, llamacpp for a .gguf (ggml: the exact graph on the same file).")
@click.option("--variant", default="auto", show_default=True, metavar="VARIANT", callback=_variant_word,
              help=f"ONNX variant: one of {', '.join(ONNX_VARIANTS)}; fast (AR steps on ar_step.q4_128.onnx, "
                   "every other pass on backbone.w8a8.onnx: the fastest on CPU); or STEP+BACKBONE to pair any two "
                   "(also the NAR half of a GGUF+ONNX folder); auto: the first exported of " + ", ".join(ONNX_VARIANTS)
                   + ".")
@click.option("--modality", type=click.Choice(["auto", "ar+nar", "nar-len"]), default="auto", show_default=True,
              help="auto: NAR-len for a model with the len capability, else AR+NAR (as the original).")
@click.option("--codec", "codec_dir", type=click.Path(path_type=Path), default=None,
              help="Folder with the EnCodec graphs (default: beside MODEL).")
@click.option("--decoder", type=click.Choice(["vocos", "encodec"]), default=None,
              help="Codes -> audio (default: vocos when vocos_decoder.onnx is in the codec folder, as the "
                   "original; else encodec). Prompts are always encoded with EnCodec.")
@click.option("--split-text-by", default="sentences", show_default=True,
              help="sentences, lines, none, or any delimiter string.")
@click.option("--context-history", type=opt.CONTEXT_PIECES, default=0, show_default=True,
              help="Earlier pieces fed as a prefix to the next (their phonemes and level-0 codes).")
@click.option("--max-duration", type=opt.DURATION, default=12.0, show_default=True, help="Seconds per piece.")
@click.option("--ar-temperature", type=opt.TEMPERATURE, default=1.0, show_default=True,
              help="AR, and NAR-len demasking annealed as T(1-t); 0 = greedy.")
@click.option("--nar-temperature", type=opt.TEMPERATURE, default=0.0, show_default=True)
@click.option("--top-k", type=opt.TOP_K, default=0, show_default=True)
@click.option("--top-p", type=opt.PROBABILITY, default=1.0, show_default=True)
@click.option("--min-p", type=opt.PROBABILITY, default=0.0, show_default=True, help="Keeps at least 32 tokens.")
@click.option("--top-no", type=opt.NON_NEGATIVE, default=0.0, show_default=True,
              help="> 0: top-nσ filter with n = 1 (as the original).")
@click.option("--repetition-penalty", type=opt.PENALTY, default=1.0, show_default=True)
@click.option("--repetition-penalty-decay", type=opt.FINITE, default=0.0, show_default=True)
@click.option("--length-penalty", type=opt.FINITE, default=0.0, show_default=True)
@click.option("--dry-multiplier", type=opt.NON_NEGATIVE, default=0.0, show_default=True)
@click.option("--dry-base", type=opt.PENALTY, default=1.75, show_default=True)
@click.option("--dry-allowed-length", type=opt.DRY_LENGTH, default=2, show_default=True)
@click.option("--demask-steps", type=opt.DEMASK_STEPS, default=25, show_default=True)
@click.option("--cfg-strength", type=opt.NON_NEGATIVE, default=0.0, show_default=True,
              help="Guidance on AR and NAR levels (0 = off); NAR-len always uses at least 2.5.")
@click.option("--cfg-rescale", type=opt.PROBABILITY, default=0.75, show_default=True)
@click.option("--seed", type=opt.SEED, default=None)
@threads_option
@n_ctx_option
@click.option("--kv-type", type=click.Choice(KV_TYPES), default="f32", show_default=True,
              help="llama.cpp KV cache type (f32 is exact for SiLU models).")
@click.option("--lora", type=click.Path(path_type=Path), default=None,
              help="llama.cpp backend: a LoRA adapter GGUF (valle-export gguf-lora) applied at run time.")
@click.option("--task", type=click.Choice(["tts", *names.TASK_IDS]), default="tts", show_default=True,
              help="ns (noise suppression) / sr (speech removal): the task row before the prompt, output as long "
                   "as the prompt (NAR-len), as the original's --task.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@quiet_option
@_one_line_errors
def synthesize_cmd(model: Path, text, phonemes, phoneme_ids, lang, text_language, tokenizer, prompt, prompt_seconds,
                   voice, out, fmt, float_wav, backend, variant, modality, codec_dir, decoder, split_text_by,
                   context_history,
                   max_duration, ar_temperature, nar_temperature, top_k, top_p, min_p, top_no, repetition_penalty,
                   repetition_penalty_decay, length_penalty, dry_multiplier, dry_base, dry_allowed_length,
                   demask_steps, cfg_strength, cfg_rescale, seed, threads, n_ctx, kv_type, lora, task, as_json,
                   quiet) -> None:
    """Speak TEXT with MODEL (an exported ONNX folder or a GGUF file) and write WAV, FLAC or OGG."""
    import json

    from runtimes import synthesize as synth
    from runtimes.samplers import SamplerSettings
    from runtimes.synthesizer import Synthesizer
    from runtimes.text import check_espeak_language
    from valle_export import audio

    check_output(out, [model, *prompt, voice, tokenizer, synth.codec_folder(model, codec_dir), lora])
    if prompt and voice is not None:
        raise BadInput("give --prompt or --voice, not both")
    if task != "tts" and not prompt and voice is None:
        raise BadInput(f"--task {task} works on the prompt's audio: give --prompt")
    if text is not None:  # cheap input checks before loading the model
        check_espeak_language(text_language or lang)
    for clip in prompt:
        audio.read_audio(clip, max_seconds=0.01)
    progress = Progress(quiet)
    progress.stage(f"loading {model} ({backend})")
    if backend == "torch" and lora is not None:
        raise BadInput("--lora applies an adapter GGUF on the llama.cpp backend only; the torch reference merges "
                       "lora.sft at export (convert --lora)", lora)
    runner = _torch_backend(model) if backend == "torch" else None
    tts = Synthesizer.open(model, backend, codec_dir, variant, threads, kv_type, tokenizer, progress, runner,
                           decoder, n_ctx, lora)
    for line in tts.warnings():
        click.echo(line, err=True)
    shared = dict(top_k=top_k, top_p=top_p, min_p=min_p, top_no=top_no, repetition_penalty=repetition_penalty,
                  repetition_decay=repetition_penalty_decay, dry_multiplier=dry_multiplier, dry_base=dry_base,
                  dry_allowed_length=dry_allowed_length)
    settings = synth.SynthesisSettings(
        modality=modality, max_duration=max_duration, demask_steps=demask_steps, cfg_strength=cfg_strength,
        cfg_rescale=cfg_rescale, seed=seed, prompt_seconds=prompt_seconds, split_text_by=split_text_by,
        context_history=context_history, task=task,
        ar=SamplerSettings(temperature=ar_temperature, length_penalty=length_penalty, **shared),
        nar=SamplerSettings(temperature=nar_temperature, **shared))
    speech = tts.speak_detailed(synth.TextInput(text, phonemes, phoneme_ids, lang, text_language),
                                voice if voice is not None else (list(prompt) or None), settings)
    audio.write_audio(out, speech.audio, speech.sample_rate, audio.format_of(out, fmt), float_wav)
    summary = speech.summary | {"out": str(out)}
    if as_json:
        click.echo(json.dumps(summary))
    elif not quiet:
        rows = [(k.removesuffix("_s"), f"{v:.3f} s") for k, v in summary["timings_s"].items()]
        rows += [("decoder", summary["decoder"]), ("total", f"{summary['total_s']:.3f} s"),
                 ("audio", f"{summary['audio_s']:.2f} s ({summary['frames']} frames, {summary['pieces']} pieces)"),
                 ("real-time factor", f"{summary['rtf']}")]
        for k, v in rows:
            click.echo(f"  {k:18s} {v}", err=True)
        if not summary["exact"]:
            click.echo(f"  note: {summary['backend']} is approximate here: {summary['approximation']}", err=True)
    progress.stage(f"wrote {out}")


@main.command("serve")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--backend", type=click.Choice(["auto", "onnx", "llamacpp", "ggml"]), default="auto",
              show_default=True,
              help="onnx batches concurrent requests; llamacpp and ggml run one sentence at a time.")
@click.option("--variant", default="auto", show_default=True, metavar="VARIANT", callback=_variant_word,
              help="ONNX variant, as for synthesize (fast, STEP+BACKBONE, or one variant).")
@click.option("--codec", "codec_dir", type=click.Path(path_type=Path), default=None,
              help="Folder with the EnCodec graphs (default: beside MODEL).")
@click.option("--decoder", type=click.Choice(["vocos", "encodec"]), default=None)
@click.option("--voices-dir", type=click.Path(path_type=Path), default=None,
              help="Where uploaded voices are kept (default: ~/.local/share/valle-export/voices).")
@click.option("--voice", "voice_specs", multiple=True, metavar="NAME=FILE",
              help="A voice clients may name (an OpenAI name such as alloy, or any): voice file or audio clip.")
@click.option("--model-name", default="valle", show_default=True, help="The `model` id; tts-1 etc. are aliases.")
@click.option("--max-rows", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Sentences stepped together (AR batch width; also NAR-len sentences in len / demasking).")
@click.option("--max-queue", type=click.IntRange(0, 100000), default=64, show_default=True,
              help="Requests waiting for a row before new ones get 429.")
@click.option("--max-kv-mb", type=click.IntRange(1, 1 << 20), default=1024, show_default=True,
              help="KV cache budget of the AR batch.")
@click.option("--ray", "use_ray", is_flag=True,
              help="Run on Ray Serve (pip install 'valle-export[ray]'): engine replicas, one per machine.")
@click.option("--replicas", type=click.IntRange(1, 10000), default=None, help="Engine replicas (with --ray; 1).")
@click.option("--autoscale", default=None, metavar="MIN:MAX", help="Autoscale engine replicas (with --ray).")
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="An existing Ray cluster (auto, HOST:PORT); default: a local Ray instance on loopback.")
@threads_option
@n_ctx_option
@_one_line_errors
def serve_cmd(model: Path, host: str, port: int, backend: str, variant: str, codec_dir, decoder, voices_dir,
              voice_specs, model_name: str, max_rows: int, max_queue: int, max_kv_mb: int, use_ray: bool,
              replicas: int | None, autoscale: str | None, ray_address: str | None, threads: int,
              n_ctx: int) -> None:
    """Serve MODEL over HTTP: OpenAI's POST /v1/audio/speech, voices, metrics and a web page at /."""
    import os

    if not use_ray and (replicas is not None or autoscale is not None or ray_address is not None):
        raise BadInput("--replicas, --autoscale and --ray-address need --ray")
    if replicas is not None and autoscale is not None:
        raise BadInput("give --replicas or --autoscale, not both")
    if use_ray:
        _serve_on_ray(model, host, port, ray_address, dict(
            model=str(model.resolve()), backend=backend, variant=variant,
            codec=str(codec_dir.resolve()) if codec_dir else None, decoder=decoder,
            voices_dir=str(voices_dir.resolve()) if voices_dir else None, voice_specs=voice_specs,
            model_name=model_name, max_rows=max_rows, max_queue=max_queue, max_kv_mb=max_kv_mb,
            replicas=replicas or 1, autoscale=autoscale, threads=threads or 1, n_ctx=n_ctx,
            # one machine (a local instance) may hold several engines; on a cluster, one engine per machine
            max_replicas_per_node=1 if ray_address else "none"))
        return

    from runtimes.engine import Engine, EngineConfig
    from runtimes.synthesizer import Synthesizer

    import uvicorn  # a missing `serve` extra is one line (valle_export.extras)

    from runtimes.server.app import ServerConfig, create_app
    from runtimes.server.voices import VoiceStore, configured_voice
    tts = Synthesizer.open(model, backend, codec_dir, variant, threads, decoder=decoder, n_ctx=n_ctx)
    for line in tts.warnings():
        click.echo(line, err=True)
    configured = dict(configured_voice(tts.codec, spec) for spec in voice_specs)
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    store = VoiceStore(voices_dir or data_home / "valle-export" / "voices", tts.codec, configured)
    engine = Engine(tts, EngineConfig(max_rows=max_rows, max_queue=max_queue, max_kv_bytes=max_kv_mb << 20))
    app = create_app(tts, engine, store, ServerConfig(model_name=model_name))
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}: anyone who can reach it may synthesize and upload voices",
                   err=True)
    click.echo(f"serving {model} on http://{host}:{port}/ ({tts.backend.name}, "
               f"{'batched' if engine.batched else 'one sentence at a time'})", err=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        engine.close()


def _serve_on_ray(model: Path, host: str, port: int, address: str | None, args: dict) -> None:
    """The same app on Ray Serve (runtimes.scale); a missing ray is one line naming the extra."""

    from runtimes.scale.config import from_args

    config = from_args({k: v for k, v in args.items() if v is not None})
    if address is None and not model.exists():
        raise BadInput("no such model", model)
    import ray  # noqa: F401  (a missing `ray` extra is one line, before anything starts)

    from runtimes.scale.launch import run_forever

    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}: anyone who can reach it may synthesize and upload voices",
                   err=True)
    engines = f"{config.autoscale[0]}-{config.autoscale[1]}" if config.autoscale else str(config.replicas)
    try:
        run_forever(config, host, port, address, on_ready=lambda base: click.echo(
            f"serving {model} on {base}/ with Ray Serve ({engines} engine replica(s), "
            f"{'cluster ' + address if address else 'local Ray on loopback'})", err=True))
    except RuntimeError as err:  # Serve's "deploying application failed" (e.g. a model a node cannot open)
        raise BadInput(f"Ray Serve could not deploy: {str(err).splitlines()[0]}") from None


@main.command("voice")
@click.argument("clips", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=opt.OUTPUT, required=True, help="The voice file (.npz).")
@click.option("--codec", "codec_dir", type=click.Path(path_type=Path), required=True,
              help="Folder with the EnCodec graphs the voice will be used with.")
@click.option("--prompt-seconds", type=opt.PROMPT_SECONDS, default=3.0, show_default=True,
              help="Repeat or trim the concatenated clips to this length; 0 = keep them whole.")
@quiet_option
@_one_line_errors
def voice_cmd(clips: tuple[Path, ...], out: Path, codec_dir: Path, prompt_seconds: float, quiet: bool) -> None:
    """Encode reference CLIPS once into a voice file for `synthesize --voice` (prompt codes + metadata)."""
    from runtimes.synthesize import find_codec
    from runtimes.voice import encode_voice, save_voice

    check_output(out, [*clips, codec_dir])
    progress = Progress(quiet)
    progress.stage(f"encoding {len(clips)} clip(s) with {codec_dir}")
    voice = encode_voice(find_codec(codec_dir, codec_dir), list(clips), prompt_seconds)
    save_voice(voice, out)
    progress.stage(f"wrote {out} ({voice.frames} frames, {voice.frames / voice.frame_rate:.2f} s)")


@main.command("transcribe")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("audio", type=click.Path(path_type=Path))
@click.option("--lang", default="en", show_default=True, help="Language token of the pass.")
@click.option("--backend", type=click.Choice(["auto", "onnx", "llamacpp", "ggml", "torch"]), default="auto",
              show_default=True)
@click.option("--codec", "codec_dir", type=click.Path(path_type=Path), default=None,
              help="Folder with the EnCodec graphs (default: beside MODEL).")
@click.option("--max-tokens", type=opt.FRAMES, default=256, show_default=True, help="Most phonemes to produce.")
@click.option("--max-seconds", type=opt.DURATION, default=30.0, show_default=True, help="Audio read from AUDIO.")
@click.option("--lora", type=click.Path(path_type=Path), default=None,
              help="llama.cpp backend: a LoRA adapter GGUF applied at run time.")
@threads_option
@n_ctx_option
@click.option("--json", "as_json", is_flag=True, help="Print ids and IPA as JSON.")
@_one_line_errors
def transcribe_cmd(model: Path, audio: Path, lang: str, backend: str, codec_dir: Path | None, max_tokens: int,
                   max_seconds: float, lora: Path | None, threads: int, n_ctx: int, as_json: bool) -> None:
    """Speech to text (the original's --task stt): AUDIO (a WAV) -> phoneme ids and IPA, greedy, head `stt`
    (the original at 73833ee reads unprojected hidden states here, a regression: see README)."""
    import json

    from runtimes import synthesize as synth
    from runtimes.stt import audio_codes, decode_ids, transcribe_ids
    from runtimes.text import language_id
    from valle_export import wav

    lang_id = language_id(lang)
    wav.read_header(audio)
    runner = _torch_backend(model) if backend == "torch" else synth.open_backend(model, backend, threads,
                                                                                            "f32", n_ctx, lora=lora)
    codec = synth.find_codec(model, codec_dir, "encodec")
    codes = audio_codes(codec, audio, max_seconds)
    ids = transcribe_ids(runner, codes, lang_id, max_tokens)
    tok = synth.tokenizer_json(model, runner)
    ipa = decode_ids(tok, ids) if tok is not None else None
    if as_json:
        click.echo(json.dumps({"ids": ids.tolist(), "ipa": ipa, "frames": int(len(codes))}, ensure_ascii=False))
    else:
        click.echo(",".join(str(i) for i in ids))
        click.echo(ipa if ipa is not None else "(no tokenizer.json beside the model: ids only)")


@main.command("encodec")
@click.argument("paths", nargs=-1, type=opt.OUTPUT, metavar="[WEIGHTS] [OUT_DIR]")
@output_option
@click.option("--seed", type=opt.SEED, default=0, show_default=True, help="Seed of the random default (no WEIGHTS).")
@quiet_option
@_one_line_errors
def encodec_cmd(paths: tuple[Path, ...], output: Path | None, seed: int, quiet: bool) -> None:
    """Export EnCodec 24 kHz (6 kbps, 8 codebooks) as ONNX encoder and decoder graphs. WEIGHTS: a transformers
    folder or an original `encodec_24khz-*.th` state dict; without it, the seeded random-weight default."""
    if len(paths) > 2 or (output is not None and len(paths) > 1):
        raise BadInput("expected [WEIGHTS] OUT_DIR, or [WEIGHTS] -o OUT_DIR")
    if output is not None:
        weights, out_dir = (paths[0] if paths else None), output
    elif paths:
        weights, out_dir = (None, paths[0]) if len(paths) == 1 else paths
    else:
        raise BadInput("missing the output: -o/--output (or OUT_DIR)")
    check_output(out_dir, [weights], folder=True, refused_kinds=_NOT_FOR_ONNX)
    progress = Progress(quiet)
    progress.stage(f"loading EnCodec ({weights or f'random weights, seed {seed}'})")
    from converters.encodec_onnx import export_codec_onnx
    from reference_model.codec import load_codec

    if weights is None:
        click.echo("warning: no WEIGHTS: exporting a random-weight EnCodec (demo only: its audio is noise)", err=True)
    export_codec_onnx(load_codec(weights, seed), out_dir, progress, random_weights=weights is None)
    progress.stage(f"wrote {out_dir}")


@main.command("vocos")
@click.argument("weights", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", type=opt.OUTPUT, required=True,
              help="Folder for vocos_decoder.onnx: the model's export folder (synthesize then decodes with it) "
                   "or a codec folder.")
@click.option("--levels", type=opt.CODEBOOK_LEVELS, default=8, show_default=True,
              help="Codebooks per frame; fixes the bandwidth id as the original (2 -> 0, 4 -> 1, else 2).")
@click.option("--seed", type=opt.SEED, default=0, show_default=True, help="Seed of the random default (no WEIGHTS).")
@quiet_option
@_one_line_errors
def vocos_cmd(weights: Path | None, out_dir: Path, levels: int, seed: int, quiet: bool) -> None:
    """Export Vocos (the original's default decoder) as vocos_decoder.onnx, codes -> audio with the inverse
    STFT inside, verified against torch. WEIGHTS: the released `pytorch_model.bin` of
    charactr/vocos-encodec-24khz (its config.yaml beside it is checked) or their folder; without it, seeded
    random weights whose codebooks are those of `valle-export encodec`'s default of the same seed."""
    from . import graphs

    check_output(out_dir, [weights], folder=True, refused_kinds=_NOT_FOR_ONNX)
    progress = Progress(quiet)
    progress.stage(f"loading Vocos ({weights or f'random weights, seed {seed}'})")
    from converters.vocos_onnx import export_vocos_onnx
    from reference_model.vocos import load_vocos

    export_vocos_onnx(load_vocos(weights, seed), out_dir, levels, progress, random_weights=weights is None)
    progress.stage(f"wrote {out_dir / graphs.VOCOS_DECODER_FILE}")


@main.command("encodec-cpp")
@click.argument("weights", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=opt.OUTPUT, required=True)
@click.option("--outtype", type=click.Choice(["f16", "f32"]), default="f16", show_default=True)
@click.option("--seed", type=opt.SEED, default=0, show_default=True, help="Seed of the random default (no WEIGHTS).")
@quiet_option
@_one_line_errors
def encodec_cpp_cmd(weights: Path | None, out: Path, outtype: str, seed: int, quiet: bool) -> None:
    """Write EnCodec 24 kHz as an encodec.cpp weight file (the drop-in partner of the GGUF). WEIGHTS: a
    transformers folder or an original `encodec_24khz-*.th`; without it, the seeded random default."""
    from valle_export import encodec_cpp_format as fmt

    check_output(out, [weights])
    progress = Progress(quiet)
    if outtype == "f32":
        click.echo("warning: stock encodec.cpp loads an f32 file but its CPU convolutions abort on it; "
                   "ship f16", err=True)
    progress.stage(f"loading EnCodec ({weights or f'random weights, seed {seed}'})")
    from converters.encodec_cpp import write_encodec_cpp
    from reference_model.codec import load_codec

    write_encodec_cpp(load_codec(weights, seed), out, fmt.F16 if outtype == "f16" else fmt.F32, progress)
    progress.stage(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, 120 tensors, checked against the "
                   "loader's table)")


@main.command("inspect")
@click.argument("file", type=click.Path(path_type=Path), metavar="FILE_OR_FOLDER")
@_one_line_errors
def inspect_cmd(file: Path) -> None:
    """Print the header, metadata and tensor table of a .gguf, .onnx or encodec.cpp file, or the layout and
    merged adapter of an export folder."""
    from .inspect_file import inspect_file

    for line in inspect_file(file):
        click.echo(line)


def _fixture_backend(fixture_dir: Path, backend: str, model: Path | None, tmp: Path, options, adapter: bool,
                     progress: Progress):
    """The backend to check: torch on the fixture's checkpoint, or an exported file (made now if not given:
    an f32 GGUF for the GGUF backends, an fp32 ONNX folder for onnx), with the folder's adapter (`lora.sft`)
    merged when `adapter`."""
    from reference_model.load import load_reference
    from runtimes.fixture_check import LORA_FILE

    lora = fixture_dir / LORA_FILE if adapter else None
    if backend == "torch":
        from reference_model.backend import TorchBackend

        return TorchBackend(load_reference(fixture_dir, lora))
    from runtimes.open import open_backend

    if model is None:
        if backend in ("llamacpp", "ggml"):
            from converters.gguf_export import export_gguf

            model = tmp / f"model{'-lora' if adapter else ''}.gguf"
            export_gguf(load_reference(fixture_dir, lora), model, "f32", progress=progress)
        else:
            from converters.onnx_export import export_onnx

            model = tmp / f"onnx{'-lora' if adapter else ''}"
            export_onnx(load_reference(fixture_dir, lora), model, progress=progress)
    return open_backend(model, backend, options)


def _given_model_serves(fixture_dir: Path, model: Path) -> bool:
    """Whether an exported MODEL given to check-fixture carries the fixture's adapter (so it serves the case
    files recorded with it) or none (the `_nolora` files); a different adapter is refused."""
    from runtimes.fixture_check import LORA_FILE

    from .lora_file import file_sha256, recorded_lora

    record = recorded_lora(model)
    if record is None:
        return False
    folder_lora = fixture_dir / LORA_FILE
    if not folder_lora.is_file() or file_sha256(folder_lora) != record.sha256:
        raise BadInput(f"has adapter {record.describe()} merged, which is not this fixture's {LORA_FILE}", model)
    return True


@main.command("check-fixture")
@click.argument("fixture_dir", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(["torch", *RUNTIME_BACKENDS]), default="torch", show_default=True)
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="An exported model to check (default: export the fixture's checkpoint to a temp folder).")
@threads_option
@n_ctx_option
@quiet_option
@_one_line_errors
def check_fixture_cmd(fixture_dir: Path, backend: str, model: Path | None, threads: int, n_ctx: int,
                      quiet: bool) -> None:
    """Run a golden fixture (checkpoint + recorded outputs of the original) and report per-case errors.
    Exit 1 if any case is beyond tolerance."""
    import tempfile

    from runtimes.fixture_check import check_fixture

    serves = None if model is None else _given_model_serves(fixture_dir, model)
    runners: dict[bool, object] = {}

    def backend_for(adapter: bool):
        if serves is not None and adapter != serves:
            return None  # a given export serves only the files of its own adapter state
        if adapter not in runners:
            runners[adapter] = _fixture_backend(fixture_dir, backend, model, Path(tmp), options, adapter,
                                                Progress(quiet))
        return runners[adapter]

    with tempfile.TemporaryDirectory() as tmp:
        options = BackendOptions(threads=threads, n_ctx=n_ctx, provider="cpu")
        results = check_fixture(fixture_dir, backend_for)
    for r in results:
        click.echo(r.line())
    failed = [r for r in results if not r.ok]
    counts = {s: sum(r.status == s for r in results) for s in ("exact", "approximate", "refused", "skipped")}
    note = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    click.echo(f"{backend}: {len(results) - len(failed)}/{len(results)} cases meet the backend's contract ({note})")
    if serves is not None:
        click.echo(f"{backend}: {model} {'carries' if serves else 'has no'} adapter: only the case files recorded "
                   f"{'with' if serves else 'without'} it were checked")
    approximations = sorted({getattr(r, "approximation", "") for r in runners.values()} - {""})
    for text in approximations:
        click.echo(f"{backend}: {text}")
    if failed:
        sys.exit(1)


@main.command("generate")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--phoneme-ids", "phonemes", default="1,40,62,9,33,4,115,25,11,2", show_default=True,
              help="Phoneme token ids, comma separated (bos 1 ... eos 2), as synthesize --phoneme-ids.")
@click.option("--lang", default="en", show_default=True, help="Language of the language token, as synthesize.")
@click.option("--prompt-frames", type=opt.FRAMES, default=75, show_default=True,
              help="Length of the seeded random acoustic prompt (frames of 8 codes).")
@click.option("--max-frames", type=opt.FRAMES, default=75, show_default=True)
@click.option("--seed", type=opt.SEED, default=0, show_default=True)
@click.option("--no-cache", is_flag=True, help="Recompute the whole sequence every AR step, as the original does.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of a table.")
@quiet_option
@_one_line_errors
def generate_cmd(model: Path, phonemes: str, lang: str, prompt_frames: int, max_frames: int, seed: int,
                 no_cache: bool, as_json: bool, quiet: bool) -> None:
    """Greedy AR + NAR codes on the torch reference (no audio): the baseline every backend must match."""
    import json
    import time

    import numpy as np

    from reference_model.backend import TorchBackend
    from reference_model.load import load_reference
    from runtimes.pipeline import Conditioning, generate_ar, generate_nar

    try:
        phn = np.array([int(x) for x in phonemes.split(",")], dtype=np.int64)
    except ValueError:
        raise BadInput(f"--phoneme-ids: not a comma-separated list of integers: {phonemes!r}") from None
    from runtimes.text import language_id

    lang = language_id(lang)
    progress = Progress(quiet)
    progress.stage(f"loading {model}")
    backend = TorchBackend(load_reference(model))
    layout = backend.layout
    prompt = np.random.default_rng(seed).integers(0, layout.audio_tokens, (prompt_frames, layout.audio_levels))
    cond = Conditioning(phn, lang, prompt)
    progress.stage("AR level 0")
    t0 = time.perf_counter()
    codes0 = generate_ar(backend, cond, max_frames, use_cache=not no_cache)
    t1 = time.perf_counter()
    progress.stage(f"NAR levels 1..{backend.layout.audio_levels - 1}")
    codes = generate_nar(backend, cond, codes0)
    t2 = time.perf_counter()
    summary = {"frames": int(len(codes0)), "ar_s": round(t1 - t0, 4),
               "ar_ms_per_step": round(1000 * (t1 - t0) / max(1, len(codes0)), 2),
               "nar_s": round(t2 - t1, 4), "kv_cache": not no_cache, "codes_head": codes[:4, :].tolist()}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        for k, v in summary.items():
            click.echo(f"{k:16s} {v}")


if __name__ == "__main__":
    main()
