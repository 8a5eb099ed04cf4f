"""End to end: a 10 s utterance per backend and weight format at the released shape, stage by stage, in one run.

    python benchmarks/bench_e2e.py [--work DIR] [--threads 2] [--rows onnx-fp32,hybrid-q4_k_m+q8_0,...]
                                   [--nar-len-rows onnx-fp32,...] [--seconds 10] [--repeat 5]

The model is the seeded full-size demo checkpoint (`valle-export demo-checkpoint --size full`, made in --work
with every export a row needs). Input: 62 phonemes, language 0, no prompt. Each row runs in its own process
(its peak RSS is its own) and times
- AR+NAR: greedy AR forced to `--seconds` of frames (the stop token is excluded), then the 7 greedy NAR levels;
- NAR-len (rows in --nar-len-rows): 25 greedy demasking steps (CFG 2.5: a conditional and a guidance-free pass
  per step, one batched call where the backend has a batch axis) for the same frames, then the NAR levels
  (with `@<n>sent`: n sentences, each step and level of all of them in one call);
- decoding the codes with Vocos and with EnCodec (ONNX graphs);
and RTF = (AR + NAR + Vocos decode) / audio seconds. Codes and Vocos audio are compared with the exact
`onnx-fp32` row: level-0 / all-level token agreement and the waveform's relative error. This machine's speed
drifts over minutes, so `--repeat N` runs the AR+NAR rows N rounds in all (rows interleaved within a round, a
bandwidth probe at the start of each) and prints each row's RTF per round, its median and its range.

Row names (a `@f16kv` suffix runs a ggml AR with an f16 KV cache; `@<n>sent`, e.g. `@2sent`, gives the
phonemes as n sentences, each with its start / end markers (60 + 2n phonemes), as the original's default
sentence split makes of an n-sentence text: their AR steps together in one batch as `synthesize` runs them
on ONNX, each forced to 1/n of the frames, then each NAR level of all of them in one call; its accuracy is against
`onnx-fp32@<n>sent`):
`onnx-<variant>` (any ONNX variant word:
fp32, int8, q8_0, q4_0, q4_128, w8a8, `fast`, or STEP+BACKBONE), `ggml-<gguf type>`, `llamacpp-<gguf type>`,
`hybrid-<gguf type>+<onnx variant>` (a model folder holding both; AR on ggml, NAR on onnxruntime, opened by
`--backend auto` exactly as `synthesize` does), and `torch-recompute`: the original's loop (torch reference,
every AR step recomputes the whole sequence, `use_cache=False`), timed at 3 lengths and EXTRAPOLATED to the
full length (a per-step time linear in the sequence length); its NAR levels are measured.

Floors, per row: an AR step must read every weight of the graph it steps on and the KV cache (at the mean
context), so `bytes / read bandwidth` (all threads, measured in this run) bounds it from below; a NAR pass must
do 2 x weights x positions multiply-adds in its weight GEMMs plus the attention FLOPs, so `weight ops / peak +
attention FLOPs / float peak` bounds it, where the peak of the weight GEMMs is numpy's float32 GEMM for float
weights and onnxruntime's u8s8 integer GEMM for quantized ones (both all threads, this run). The table gives
measured / floor.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench import _timed, gguf_path, prepare as prepare_base  # noqa: E402

AUDIO_TOKENS = 1024  # AR head rows past these are the stop token: excluded to force the length
PHONEMES = 62
DEFAULT_ROWS = ["torch-recompute", "onnx-fp32", "onnx-fast", "onnx-q8_0+w8a8", "onnx-w8a8", "onnx-q8_0", "ggml-q8_0",
                "ggml-q4_k_m", "llamacpp-q4_0", "hybrid-q4_k_m+w8a8", "onnx-fast@2sent", "onnx-fast@3sent"]
DEFAULT_NAR_LEN_ROWS = ["onnx-fp32", "onnx-fast"]
RECOMPUTE_PROBES = 3  # torch-recompute: passes timed at the start, middle and end lengths
EXACT_ROW = "onnx-fp32"  # the rows' accuracy is measured against this one (it runs first)
SENTENCES_SUFFIX = "sent"  # a row `onnx-<variant>@<n>sent`: the phonemes as n sentences, run together


def sentence_count(row: str) -> int:
    """n of a row's `@<n>sent` suffix (1 without one)."""
    suffix = row.partition("@")[2]
    return int(suffix[:-len(SENTENCES_SUFFIX)]) if suffix.endswith(SENTENCES_SUFFIX) else 1
CAVEAT = ("Caveat: these numbers hold for an idle machine. Other processes on these cores (see the load average "
          "printed before and after each row) slow every row; rerun when the 1-minute load is below 1.")


# --- inputs ------------------------------------------------------------------------------------------------
def conditioning(seed: int = 0):
    from runtimes.pipeline import Conditioning

    rng = np.random.default_rng(seed)
    phn = np.concatenate([[1], rng.integers(3, 256, PHONEMES - 2), [2]]).astype(np.int64)
    return Conditioning(phn, 0, None)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "n/a"


# --- backends ----------------------------------------------------------------------------------------------
def hybrid_folder(work: Path, row: str) -> Path:
    """A model folder as a user would make it: the ONNX export's files and one GGUF (symbolic links here)."""
    gguf_type, variant = row.split("@")[0].split("-", 1)[1].split("+")
    folder = work / f"hybrid.{gguf_type}.{variant}"
    folder.mkdir(exist_ok=True)
    from valle_export import graphs

    onnx_files = [graphs.backbone_file(variant), graphs.WEIGHTS_FILE, "valle_layout.json",
                  "valle_source_config.json"]
    if variant == "fp32":
        onnx_files.append("backbone.onnx.data")
    for name in onnx_files:
        link = folder / name
        if not link.exists():
            link.symlink_to(work / "onnx" / name)
    link = folder / f"ar.{gguf_type}.gguf"
    if not link.exists():
        link.symlink_to(work / f"model.{gguf_type}.gguf")
    return folder


def open_row(row: str, work: Path, threads: int):
    from runtimes.synthesize import open_backend

    row, _, suffix = row.partition("@")
    kv_type = "f16" if suffix == "f16kv" else "f32"
    kind, _, spec = row.partition("-")
    if kind == "torch":
        import torch

        from reference_model.backend import TorchBackend
        from reference_model.load import load_reference

        torch.set_num_threads(threads)
        return TorchBackend(load_reference(work / "ckpt"))
    if kind == "onnx":
        return open_backend(work / "onnx", "onnx", threads, variant=spec)
    if kind == "hybrid":
        return open_backend(hybrid_folder(work, row), "auto", threads, kv_type, n_ctx=2048,
                            variant=spec.split("+")[1])
    return open_backend(work / f"model.{spec}.gguf", kind, threads, kv_type, n_ctx=2048)


# --- stages ------------------------------------------------------------------------------------------------
def forced_ar(backend, cond, frames: int) -> tuple[np.ndarray, list[float]]:
    """Greedy level-0 codes with the stop token excluded (exactly `frames`), and each step's seconds."""
    from valle_export import names, sequence as seq

    spec = seq.ar_pass(backend.layout, cond.phn, cond.lang, cond.prompt, [])
    t = time.perf_counter()
    logits = backend.prefill(spec)
    times, codes = [time.perf_counter() - t], []
    for _ in range(frames - 1):
        codes.append(int(np.argmax(logits[:AUDIO_TOKENS])))
        t = time.perf_counter()
        spec = seq.extend(backend.layout, spec, names.HEAD_AR, [codes[-1]])
        logits = backend.extend(spec)
        times.append(time.perf_counter() - t)
    codes.append(int(np.argmax(logits[:AUDIO_TOKENS])))
    return np.array(codes, dtype=np.int64), times


def recompute_ar(backend, cond, frames: int) -> dict:
    """The original's loop (a full causal pass per step), timed at the start, middle and end lengths and
    summed over every step by linear interpolation: an extrapolation, labelled so in the table."""
    from valle_export import sequence as seq

    rng = np.random.default_rng(1)
    codes = rng.integers(0, AUDIO_TOKENS, frames)
    probes = np.linspace(0, frames - 1, RECOMPUTE_PROBES).astype(int)
    lengths, secs = [], []
    for k in probes:
        spec = seq.ar_pass(backend.layout, cond.phn, cond.lang, cond.prompt, codes[:k])
        secs.append(min(_timed(lambda: backend.logits(spec)) for _ in range(2)))
        lengths.append(spec.length)
    fit = np.polyfit(lengths, secs, 1)
    first = lengths[0]
    total = float(np.polyval(fit, np.arange(first, first + frames)).sum())
    return {"ar_s": total, "ar_extrapolated": True, "probe_lengths": lengths, "probe_s": secs,
            "step_first_ms": 1000 * secs[0], "step_last_ms": 1000 * secs[-1]}


def sentences(cond, n: int):
    """The same phonemes as `n` sentences (each with its own start / end markers): a text the original splits
    by sentence by default (`--split-text-by sentences`), each sentence synthesized on its own; n = 1 gives
    `cond`'s own phonemes."""
    from runtimes.pipeline import Conditioning

    return [Conditioning(np.concatenate([[1], m, [2]]).astype(np.int64), cond.lang, None)
            for m in np.array_split(cond.phn[1:-1], n)]


class NoStop:
    """The backend with the AR head's stop token masked (`with NoStop(backend):`), so every row runs exactly
    the asked number of steps (the numbers measure per-step cost, not the luck of the stop token)."""

    def __init__(self, backend):
        self.backend, self.original = backend, backend.head_logits

    def __enter__(self):
        from valle_export import names

        def no_stop(hidden, head):
            out = self.original(hidden, head)
            if head == names.HEAD_AR:
                out[..., AUDIO_TOKENS:] = -np.inf
            return out

        self.backend.head_logits = no_stop

    def __exit__(self, *exc):
        del self.backend.head_logits


def forced_ar_together(backend, conds: list, frames: int) -> tuple[list[np.ndarray], float, float, int]:
    """Greedy level 0 of every sentence stepping in one batch (as `synthesize` runs a text's sentences on
    ONNX), each forced to `frames` (the stop token excluded): codes, seconds, of which prefill, batched steps."""
    from runtimes.ar_batch import ArBatch, ArRow

    with NoStop(backend):
        rows = [ArRow(c, frames) for c in conds]
        t, steps = time.perf_counter(), 0
        batch = ArBatch(backend)
        batch.admit(rows)
        prefill = time.perf_counter() - t
        while len(batch):
            batch.step()
            steps += 1
        return [r.result for r in rows], time.perf_counter() - t, prefill, steps


def nar_levels(backend, cond, codes0: np.ndarray) -> tuple[np.ndarray, float, int]:
    from runtimes.pipeline import generate_nar

    t = time.perf_counter()
    codes = generate_nar(backend, cond, codes0)
    return codes, time.perf_counter() - t, backend.layout.audio_levels - 1


def nar_levels_together(backend, conds: list, codes0: list[np.ndarray]) -> tuple[float, int, list[np.ndarray]]:
    """Greedy NAR levels of every sentence, each level of all of them in one call (as `synthesize` runs a
    text's sentences on ONNX): seconds, levels, codes per sentence."""
    from runtimes.pipeline import NarRow, generate_nar_together

    rows = [NarRow.after_level0(c, c0) for c, c0 in zip(conds, codes0)]
    t = time.perf_counter()
    generate_nar_together(backend, rows)
    return time.perf_counter() - t, backend.layout.audio_levels - 1, [r.resp for r in rows]


def nar_len(backend, cond, frames: int, pieces: int = 1) -> tuple[np.ndarray, dict]:
    """Greedy NAR-len for `frames`; with `pieces` > 1 the phonemes as that many sentences, each its share of
    the frames, demasking steps then NAR levels of all of them in one call each (as `synthesize` runs a text's
    sentences on ONNX)."""
    from runtimes.pipeline import DemaskSettings, NarRow, demask_row, demask_together, generate_nar_together

    settings = DemaskSettings()
    conds = sentences(cond, pieces)  # one piece: the same phonemes
    t = time.perf_counter()
    rows = [demask_row(backend.layout, c, frames // pieces, settings) for c in conds]
    demask_together(backend, rows)
    demask_s = time.perf_counter() - t
    nar = [NarRow.after_level0(c, row.tokens) for c, row in zip(conds, rows)]
    t = time.perf_counter()
    generate_nar_together(backend, nar)
    nar_s = time.perf_counter() - t
    return np.concatenate([r.resp for r in nar]), {"demask_s": demask_s, "demask_steps": settings.steps,
                                                   "nar_s": nar_s}


def decode_all(work: Path, codes: np.ndarray, threads: int) -> tuple[dict, np.ndarray | None]:
    """Seconds to decode with each exported decoder (after a warm-up), and the Vocos (else EnCodec) audio."""
    from runtimes.codec import OnnxDecoder
    from valle_export import graphs

    out, audio = {}, None
    for name in ("vocos", "encodec"):
        path = work / "codec" / graphs.DECODER_FILES[name]
        if not path.is_file():
            continue
        dec = OnnxDecoder(path, provider="cpu", threads=threads)
        dec.decode(codes[:75].T)
        t = time.perf_counter()
        wave = dec.decode(codes.T)
        out[f"{name}_s"] = time.perf_counter() - t
        audio = wave if audio is None else audio
        del dec
    return out, audio


def measure(row: str, work: Path, threads: int, seconds: float, modalities: list[str]) -> dict:
    backend = open_row(row, work, threads)
    layout = backend.layout
    frames = int(seconds * layout.frame_rate)
    cond = conditioning()
    result = {"row": row, "frames": frames, "load_before": _load(), "exact": bool(getattr(backend, "exact", True)),
              "approximation": getattr(backend, "approximation", ""), "backend": backend.name}
    warm = conditioning(5)
    from valle_export import sequence as seq

    backend.logits(seq.ar_pass(layout, warm.phn, 0, None, [1, 2, 3]))  # warm-up: first-call allocations
    pieces = sentence_count(row)
    result["rows"] = pieces
    if "ar+nar" in modalities and pieces > 1:
        conds = sentences(cond, pieces)
        per = frames // pieces
        codes0, ar_s, prefill_s, steps = forced_ar_together(backend, conds, per)
        nar_s, passes, parts = nar_levels_together(backend, conds, codes0)
        codes = np.concatenate(parts)
        result.update({"ar_s": ar_s, "step_ms": 1000 * (ar_s - prefill_s) / steps, "step_first_ms": float("nan"),
                       "step_last_ms": float("nan"), "ar_extrapolated": False,
                       "context_first": int(len(conds[0].phn) + 3), "context_last": int(len(conds[0].phn) + 2 + per),
                       "nar_s": nar_s, "nar_pass_ms": 1000 * nar_s / (passes * pieces),
                       "nar_positions": int(len(seq.nar_pass(layout, conds[0].phn, cond.lang, None,
                                                             codes[:per, :1], 1).rows))})
        dec, audio = decode_all(work, codes, threads)
        result.update(dec)
        np.savez(work / f"e2e.{row}.npz", codes=codes, audio=audio if audio is not None else np.zeros(0))
    elif "ar+nar" in modalities:
        if row == "torch-recompute":
            result.update(recompute_ar(backend, cond, frames))
            codes0 = np.random.default_rng(1).integers(0, AUDIO_TOKENS, frames)
        else:
            codes0, steps = forced_ar(backend, cond, frames)
            ms = 1000 * np.asarray(steps[1:])
            k = max(1, len(ms) // 20)
            result.update({"ar_s": float(sum(steps)), "prefill_ms": 1000 * steps[0], "step_ms": float(ms.mean()),
                           "step_first_ms": float(ms[:k].mean()), "step_last_ms": float(ms[-k:].mean()),
                           "ar_extrapolated": False, "context_first": int(len(cond.phn) + 3),
                           "context_last": int(len(cond.phn) + 2 + frames)})
        codes, nar_s, passes = nar_levels(backend, cond, codes0)
        result.update({"nar_s": nar_s, "nar_pass_ms": 1000 * nar_s / passes, "nar_positions": int(
            len(seq.nar_pass(layout, cond.phn, cond.lang, None, codes[:, :1], 1).rows))})
        dec, audio = decode_all(work, codes, threads)
        result.update(dec)
        np.savez(work / f"e2e.{row}.npz", codes=codes, audio=audio if audio is not None else np.zeros(0))
    ref = work / f"e2e.{EXACT_ROW}.npz"
    if "ar+nar" in modalities and row not in (EXACT_ROW, "torch-recompute") and ref.exists() and pieces == 1:
        from benchmarks.accuracy import teacher_forced

        result["teacher_forced"] = teacher_forced(backend, cond, np.load(ref)["codes"])
    if "nar-len" in modalities:
        codes, info = nar_len(backend, cond, frames, pieces)
        result["nar_len"] = info
        np.savez(work / f"e2e.{row}.nar-len.npz", codes=codes)
    result["peak_rss_mb"] = _peak_rss_mb()
    result["load_after"] = _load()
    return result


# --- floors ------------------------------------------------------------------------------------------------
def read_bandwidth(threads: int) -> float:
    """Bytes/s of `threads` numpy sums over disjoint 256 MiB arrays at once (numpy releases the GIL), best of 3."""
    arrays = [np.ones(64 << 20, dtype=np.float32) for _ in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        def once() -> float:
            t = time.perf_counter()
            list(pool.map(np.sum, arrays))
            return time.perf_counter() - t

        best = min(once() for _ in range(3))
    return sum(a.nbytes for a in arrays) / best


def gemm_peak(threads: int) -> float:
    """float32 FLOP/s of numpy's GEMM (OpenBLAS, `threads` threads) at a NAR pass's shape, best of 3."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    code = ("import numpy as np,time\na=np.ones((800,1024),np.float32);b=np.ones((1024,4096),np.float32)\n"
            "a@b\nbest=min((lambda t:(a@b,time.perf_counter()-t)[1])(time.perf_counter()) for _ in range(5))\n"
            "print(2*800*1024*4096/best)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip())


def int8_gemm_peak(threads: int) -> float:
    """Integer multiply-adds x 2 per second of onnxruntime's u8s8 GEMM (`MatMulInteger`, the kernel the w8a8
    graphs and MatMulNBits' int8 path reach; VNNI / AMX) at a NAR pass's shape, best of 5."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((1024, 4096), np.int8), "w")
    zp = numpy_helper.from_array(np.array(128, np.uint8), "zp")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w", "zp"], ["y"])], "peak",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [800, 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [800, 4096])], [w, zp])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                   .SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"a": np.full((800, 1024), 129, np.uint8)}
    session.run(None, feed)
    best = min((lambda t: (session.run(None, feed), time.perf_counter() - t)[1])(time.perf_counter())
               for _ in range(5))
    return 2 * 800 * 1024 * 4096 / best


def integer_nar(row: str) -> bool:
    """Whether a row's NAR multiplies its weights in integers (quantized weights, int8 activations)."""
    kind, _, spec = row.split("@")[0].partition("-")
    if kind == "hybrid":
        spec = spec.split("+", 1)[1]
    if kind in ("onnx", "hybrid"):
        from valle_export.backend_options import split_variant

        return split_variant(spec)[1] not in ("fp32", "fp16")
    return kind in ("ggml", "llamacpp") and spec.lower() not in ("f32", "f16", "bf16")


def weight_bytes(work: Path, row: str) -> int:
    """Backbone weight bytes one AR step reads: the AR half's GGUF blocks, or the ONNX backbone's file(s)."""
    from benchmarks.bench import backbone_bytes
    from valle_export import graphs

    kind, _, spec = row.split("@")[0].partition("-")
    if kind in ("ggml", "llamacpp"):
        return backbone_bytes(gguf_path(work, row))
    if kind == "hybrid":
        return backbone_bytes(work / f"model.{spec.split('+')[0]}.gguf")
    from valle_export.backend_options import split_variant

    step, backbone = split_variant("fp32" if kind == "torch" else spec)
    base = work / "onnx" / graphs.step_file(step)  # what a cached step reads (the backbone where no step graph)
    if kind == "torch" or not base.exists():
        base = work / "onnx" / graphs.backbone_file(backbone)
    return sum(p.stat().st_size for p in (base, Path(str(base) + ".data")) if p.exists())


def nar_weight_params(work: Path) -> int:
    """Backbone parameters (each one multiply-add per position in a NAR pass): from the f32 GGUF or fp32 ONNX."""
    base = work / "onnx" / "backbone.onnx"
    return sum(p.stat().st_size for p in (base, Path(str(base) + ".data")) if p.exists()) // 4


def add_floors(r: dict, work: Path, bandwidth: float, peak: float, int_peak: float, d: int = 1024,
               layers: int = 12) -> None:
    if "step_ms" in r:
        kv_type_bytes = 2 if r["row"].endswith("@f16kv") else 4
        mean_ctx = (r["context_first"] + r["context_last"]) / 2
        kv = 2 * layers * mean_ctx * d * kv_type_bytes * r.get("rows", 1)  # a batched step reads every row's
        r["ar_floor_ms"] = 1000 * (weight_bytes(work, r["row"]) + kv) / bandwidth
    if "nar_pass_ms" in r:
        n = r["nar_positions"]  # weight GEMMs at the integer or float peak, attention (float) at the float peak
        weights = 2 * nar_weight_params(work) * n
        r["nar_floor_ms"] = 1000 * (weights / (int_peak if integer_nar(r["row"]) else peak)
                                    + 4 * layers * n * n * d / peak)


# --- accuracy against the exact row --------------------------------------------------------------------------
def add_accuracy(results: list[dict], work: Path, exact: str = "onnx-fp32") -> None:
    from benchmarks.accuracy import free_running
    from valle_export import contracts

    for r in results:
        path = work / f"e2e.{r['row']}.npz"
        n = sentence_count(r["row"])
        same_input = f"{exact}@{n}{SENTENCES_SUFFIX}" if n > 1 else exact
        ref_path = work / f"e2e.{same_input}.npz"
        if r["row"] in ("torch-recompute", same_input) or not path.exists() or not ref_path.exists():
            continue
        ref, got = np.load(ref_path), np.load(path)
        r["free_running"] = free_running(got["codes"], ref["codes"])
        if got["audio"].size and got["audio"].shape == ref["audio"].shape:
            r["wave_rel"] = contracts.rel_error(got["audio"], ref["audio"])


# --- report ------------------------------------------------------------------------------------------------
def _f(x, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def print_tables(results: list[dict], args, bandwidth: float, peaks: tuple[float, float],
                 loads: tuple[str, str]) -> None:
    seconds = args.seconds
    print(f"\n{args.threads} threads, {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"read bandwidth {bandwidth / 1e9:.1f} GB/s, GEMM peak {peaks[0] / 1e9:.0f} GFLOP/s (numpy float32) and "
          f"{peaks[1] / 1e9:.0f} GOP/s (onnxruntime u8s8 integer), {args.threads} threads; load average before "
          f"{loads[0]}, after {loads[1]}")
    print(CAVEAT)
    print(f"\nAR+NAR, greedy, {seconds:g} s forced ({int(seconds * 75)} frames, stop token excluded), {PHONEMES} "
          "phonemes, no prompt; RTF = (AR + NAR + Vocos decode) / audio seconds")
    print("| row | AR (s) | AR step first/mean/last (ms) | AR step / floor | NAR 7 passes (s) | NAR pass / floor "
          "| Vocos (s) | EnCodec (s) | total (s) | RTF | peak RSS (MB) | teacher-forced AR / NAR agreement "
          "| free-running level-0 / all agreement | wave rel err | load (1 min) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "ar_s" not in r:
            continue
        total = total_s(r)
        name = r["row"] + (" (AR extrapolated from 3 passes)" if r.get("ar_extrapolated") else "")
        if r.get("rows", 1) > 1:
            name += f" ({r['rows']} sentences: AR steps and NAR levels batched)"
            step = f"- / {r['step_ms']:.1f} / -"
        elif "step_ms" in r:
            step = f"{r['step_first_ms']:.1f} / {r['step_ms']:.1f} / {r['step_last_ms']:.1f}"
        else:
            step = f"{r['step_first_ms']:.0f} / - / {r['step_last_ms']:.0f}"
        ar_ratio = f"{r['step_ms'] / r['ar_floor_ms']:.2f}x ({r['ar_floor_ms']:.1f})" if "ar_floor_ms" in r else "-"
        nar_ratio = f"{r['nar_pass_ms'] / r['nar_floor_ms']:.2f}x" if "nar_floor_ms" in r else "-"
        fr, tf = r.get("free_running"), r.get("teacher_forced")
        free = f"{fr['level0']:.1%} / {fr['all']:.1%}" if fr else "-"
        forced = f"{tf['ar']:.1%} / {tf['nar']:.1%}" if tf else "-"
        print(f"| {name} | {r['ar_s']:.2f} | {step} | {ar_ratio} | {r['nar_s']:.2f} | {nar_ratio} "
              f"| {_f(r.get('vocos_s'))} | {_f(r.get('encodec_s'))} | {total:.2f} | {total / seconds:.2f} "
              f"| {r['peak_rss_mb']:.0f} | {forced} | {free} | {_f(r.get('wave_rel'), '{:.1e}')} "
              f"| {r['load_before'].split()[0]} |")
    lens = [r for r in results if "nar_len" in r]
    if lens:
        print(f"\nNAR-len, {seconds:g} s ({int(seconds * 75)} frames), 25 greedy demasking steps (CFG 2.5: "
              "conditional + guidance-free pass per step), then the NAR levels; RTF = (demask + NAR + Vocos) / audio")
        print("| row | demask (s) | per step (ms) | NAR (s) | Vocos (s) | total (s) | RTF |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in lens:
            x = r["nar_len"]
            total = x["demask_s"] + x["nar_s"] + r.get("vocos_s", 0.0)
            name = r["row"] + (f" ({r['rows']} sentences together)" if r.get("rows", 1) > 1 else "")
            print(f"| {name} | {x['demask_s']:.2f} | {1000 * x['demask_s'] / x['demask_steps']:.0f} "
                  f"| {x['nar_s']:.2f} | {_f(r.get('vocos_s'))} | {total:.2f} | {total / seconds:.2f} |")


# --- driver ------------------------------------------------------------------------------------------------
def prepare(work: Path, rows: list[str]) -> None:
    """Everything the rows need, made once in --work (shared with bench.py's files)."""
    base = ["onnx-fp32", "encodec-onnx", "vocos-onnx"]
    for row in rows:
        kind, _, spec = row.split("@")[0].partition("-")
        if kind in ("ggml", "llamacpp"):
            base.append(row)
        elif kind == "hybrid":
            base.append("ggml-" + spec.split("+")[0])
        elif kind == "onnx" and spec == "int8":
            base.append("onnx-int8")
    prepare_base(work, base)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    for row in rows:
        kind, _, spec = row.split("@")[0].partition("-")
        variant = spec.split("+", 1)[1] if kind == "hybrid" else spec if kind == "onnx" else None
        if variant is not None:
            ensure_onnx(work / "onnx", variant, env)


def ensure_onnx(folder: Path, variant: str, env: dict) -> None:
    """Export what `variant` (one variant, `fast` or STEP+BACKBONE) needs into `folder`, unless present."""
    from valle_export import graphs
    from valle_export.backend_options import FAST_PAIR, FAST_PRESET, split_variant

    step, backbone = split_variant(variant)
    needs = [(backbone, graphs.backbone_file(backbone))] + ([(step, graphs.step_file(step))] if step != "fp16" else [])
    missing = [v for v, name in needs if not (folder / name).exists()]
    if not missing:
        return
    words = [FAST_PRESET] if variant == FAST_PRESET and set(missing) == set(FAST_PAIR) else dict.fromkeys(missing)
    for word in words:
        outtype = {"fp32": "f32", "fp16": "f16"}.get(word, word)
        subprocess.run([sys.executable, "-m", "valle_export.cli", "onnx", str(folder.parent / "ckpt"), "-o",
                        str(folder), "--outtype", outtype, "-q"], check=True, env=env)


def run_child(row: str, args, modalities: list[str]) -> dict | None:
    """One row measured in its own process (its peak RSS is its own); None (reported) if it failed."""
    out = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--threads", str(args.threads),
                          "--seconds", str(args.seconds), "--modalities", ",".join(modalities), "--child", row],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        print(f"{row}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def total_s(r: dict) -> float:
    """AR + NAR + decode seconds of one AR+NAR measurement (the decode is Vocos where measured): RTF's numerator."""
    return r["ar_s"] + r["nar_s"] + r.get("vocos_s", r.get("encodec_s", 0.0))


def rtf(r: dict, seconds: float) -> float:
    return total_s(r) / seconds


def print_rounds(rounds: list[dict], rows: list[str]) -> None:
    """The RTF of every row in every round (rows interleaved within a round, so a slow phase of the machine
    hits every row of that round), with each round's read bandwidth, and per row the median and range."""
    print(f"\nAR+NAR RTF over {len(rounds)} rounds (each round: a bandwidth probe, then every row in turn)")
    print("| row | " + " | ".join(f"round {i + 1} ({r['bandwidth'] / 1e9:.1f} GB/s)" for i, r in enumerate(rounds))
          + " | median | min - max | rounds under 1 |")
    print("|---|" + "---:|" * (len(rounds) + 3))
    for row in rows:
        got = [r["rtf"].get(row) for r in rounds]
        ok = [x for x in got if x is not None]
        if not ok:
            continue
        cells = " | ".join(_f(x) for x in got)
        print(f"| {row} | {cells} | {np.median(ok):.2f} | {min(ok):.2f} - {max(ok):.2f} "
              f"| {sum(x < 1 for x in ok)} of {len(ok)} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=REPO / "demo" / "bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS))
    ap.add_argument("--nar-len-rows", default=",".join(DEFAULT_NAR_LEN_ROWS))
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the AR+NAR rows (all but torch-recompute) this many rounds in all, interleaved, and "
                         "print each row's RTF per round with the median and range")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--modalities", default="ar+nar", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.work, args.threads, args.seconds, args.modalities.split(","))))
        return
    rows, len_rows = args.rows.split(","), [r for r in args.nar_len_rows.split(",") if r]
    prepare(args.work, rows + len_rows)
    start_load = _load()
    print(f"load average at start: {start_load} ({os.cpu_count()} cores)", file=sys.stderr)
    bandwidth, peak, int_peak = read_bandwidth(args.threads), gemm_peak(args.threads), int8_gemm_peak(args.threads)
    results = []
    for row in sorted(dict.fromkeys(rows + len_rows), key=lambda r: r != EXACT_ROW):  # exact row first
        modalities = [m for m, on in (("ar+nar", row in rows), ("nar-len", row in len_rows)) if on]
        r = run_child(row, args, modalities)
        if r is None:
            continue
        add_floors(r, args.work, bandwidth, peak, int_peak)
        results.append(r)
        line = f"  measured {row} (load {r['load_before']} -> {r['load_after']})"
        if "ar_s" in r:
            line += f": AR {r['ar_s']:.2f} s, NAR {r['nar_s']:.2f} s, Vocos {r.get('vocos_s', 0):.2f} s"
        print(line, file=sys.stderr, flush=True)
    add_accuracy(results, args.work)
    print_tables(results, args, bandwidth, (peak, int_peak), (start_load, _load()))
    rounds = [{"bandwidth": bandwidth, "load": start_load,
               "rtf": {r["row"]: rtf(r, args.seconds) for r in results if "ar_s" in r}}]
    repeated = [r for r in rows if r != "torch-recompute"]  # the original's loop takes ~20 minutes a round
    for k in range(2, args.repeat + 1):
        print(f"round {k} of {args.repeat}", file=sys.stderr, flush=True)
        rounds.append({"bandwidth": read_bandwidth(args.threads), "load": _load(), "rtf": {}})
        for row in repeated:
            r = run_child(row, args, ["ar+nar"])
            if r is not None:
                rounds[-1]["rtf"][row] = rtf(r, args.seconds)
    if args.repeat > 1:
        print_rounds(rounds, repeated)
    if args.json:
        args.json.write_text(json.dumps({"bandwidth": bandwidth, "gemm_peak": peak, "int8_gemm_peak": int_peak,
                                         "rows": results, "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
