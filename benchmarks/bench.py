"""Speed of every backend at the released size, in one run, printed as a table.

    python benchmarks/bench.py [--work DIR] [--threads 2] [--rows torch,torch-recompute,onnx-fp32,onnx-int8]
    python benchmarks/bench.py --rows encodec-onnx,vocos-onnx     # the two decoders side by side

Each row runs in its own process (so its peak RSS is its own): build the model from the full-size demo
checkpoint (made in --work if missing), then time a causal prefill of 300 positions, one cached decode step
at past 300 (mean of 20), and a bidirectional NAR pass of 600 positions. The `torch-recompute` row is the
original's loop: every AR step recomputes the whole 301-position sequence.

llama.cpp rows take a suffix: `llamacpp-q4_0@off` loads without llama.cpp's extra weight buffers (AMX, CPU
repack; what Intel AMX hosts get, runtimes/host_cpu.py), `@on` with them. `relabel-<type>` rows time the
released configuration's real AR pass on llama.cpp (segmented positions: 62 phonemes, lang, level, a 3 s
prompt, response): the prefill with its 4 relabels, the mean cost of one relabel, and the cached AR step after.
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
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from valle_export import names  # noqa: E402
from valle_export.sequence import PassSpec  # noqa: E402

PREFILL, NAR_LEN, STEPS = 300, 600, 20
GGUF_TYPES = ["f32", "f16", "q8_0", "q4_0", "q4_k_m"]
ROWS = (["torch", "torch-recompute", "onnx-fp32", "onnx-int8"] + [f"llamacpp-{t}" for t in GGUF_TYPES]
        + [f"ggml-{t}" for t in GGUF_TYPES])
CODEC_ROWS = ["encodec-torch", "encodec-onnx", "vocos-onnx"]
CODEC_SECONDS = 10.0


def synthetic_spec(layout, length: int, causal: bool, width: int, seed: int) -> PassSpec:
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, layout.vocab_size, (length, width))
    head = names.HEAD_AR if causal else names.head_nar(1)
    return PassSpec(rows, np.arange(length), causal, head, length - 1, np.zeros(length, np.int8))


def extended(spec: PassSpec, k: int) -> PassSpec:
    rows = np.concatenate([spec.rows, spec.rows[:k]])
    n = len(rows)
    return PassSpec(rows, np.arange(n), True, spec.head, n - 1, np.zeros(n, np.int8))


def gguf_path(work: Path, row: str) -> Path:
    return work / f"model.{row.split('@')[0].split('-', 1)[1]}.gguf"


def make_backend(row: str, work: Path, threads: int):
    if row.startswith("torch"):
        import torch

        from reference_model.backend import TorchBackend
        from reference_model.load import load_reference

        torch.set_num_threads(threads)
        return TorchBackend(load_reference(work / "ckpt"))
    from runtimes.open import open_backend
    from valle_export.backend_options import BackendOptions

    extra = row.split("@")[1] if "@" in row else None
    if row.startswith(("ggml-", "llamacpp-", "relabel-")):
        kind = "ggml" if row.startswith("ggml-") else "llamacpp"
        return open_backend(gguf_path(work, row), kind, BackendOptions(threads=threads, n_ctx=1024, extra_bufts=extra))
    return open_backend(work / "onnx", "onnx", BackendOptions(threads=threads, provider="cpu",
                                                              variant=row.split("-")[1]))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def codec_functions(row: str, work: Path, threads: int):
    """(decode, make_encode) of a codec row; the encoder is built only after decoding, so the decode peak RSS
    is the decoder's alone. `vocos-onnx` is a decoder only (prompts are always EnCodec-encoded)."""
    if row == "encodec-torch":
        import torch

        from reference_model import codec

        torch.set_num_threads(threads)
        model = codec.random_codec(0)
        return (lambda c: codec.decode(model, c)), (lambda: (lambda a: codec.encode(model, a)))
    from runtimes.codec import OnnxCodec, OnnxDecoder
    from valle_export import graphs

    file = graphs.DECODER_FILES[row.split("-")[0]]
    decoder = OnnxDecoder(work / "codec" / file, provider="cpu", threads=threads)
    if row == "vocos-onnx":
        return decoder.decode, None
    return decoder.decode, lambda: OnnxCodec(work / "codec", provider="cpu", threads=threads).encode


def measure_codec(row: str, work: Path, threads: int) -> dict:
    """Decode (best of 3) and encode 10 s of audio; real-time factor = processing time / audio duration."""
    rng = np.random.default_rng(0)
    audio = (0.2 * rng.standard_normal(int(CODEC_SECONDS * 24000))).astype(np.float32)
    codes = rng.integers(0, 1024, (8, int(CODEC_SECONDS * 75)))
    dec, make_encode = codec_functions(row, work, threads)
    dec(codes[:, :75])  # warm-up
    decode_s = min(_timed(lambda: dec(codes)) for _ in range(3))
    decode_rss = _peak_rss_mb()
    encode_s = None
    if make_encode is not None:
        enc = make_encode()
        enc(audio[:24000])  # warm-up
        encode_s = _timed(lambda: enc(audio))
    return {"row": row, "encode_rtf": None if encode_s is None else encode_s / CODEC_SECONDS,
            "decode_rtf": decode_s / CODEC_SECONDS, "decode_peak_rss_mb": decode_rss, "peak_rss_mb": _peak_rss_mb()}


def measure_relabel(row: str, work: Path, threads: int) -> dict:
    """The released configuration's AR pass on llama.cpp: prefill (4 relabels), one relabel, cached steps."""
    from valle_export import sequence as seq

    backend = make_backend(row, work, threads)
    layout, rng = backend.layout, np.random.default_rng(0)
    phn = np.concatenate([[1], rng.integers(3, 256, 60), [2]])
    prompt = rng.integers(0, 1024, (225, 8))
    relabel_ms: list[float] = []
    relabel = backend._relabel

    def timed_relabel(position: int) -> None:
        t = time.perf_counter()
        relabel(position)
        relabel_ms.append(1000 * (time.perf_counter() - t))

    backend._relabel = timed_relabel
    spec = seq.ar_pass(layout, phn, 0, prompt, [int(rng.integers(0, 1024))])
    backend.prefill(spec)  # warm-up
    relabel_ms.clear()
    t = time.perf_counter()
    backend.prefill(spec)
    prefill_ms = 1000 * (time.perf_counter() - t)
    relabels = len(relabel_ms)
    t = time.perf_counter()
    for code in rng.integers(0, 1024, STEPS):
        spec = seq.extend(layout, spec, names.HEAD_AR, [int(code)])
        backend.extend(spec)
    step_ms = 1000 * (time.perf_counter() - t) / STEPS
    return {"row": row, "positions": int(spec.length - STEPS), "prefill_ms": prefill_ms, "relabels": relabels,
            "relabel_ms": float(np.mean(relabel_ms)), "step_ms": step_ms,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(row: str, work: Path, threads: int) -> dict:
    if row in CODEC_ROWS:
        return measure_codec(row, work, threads)
    if row.startswith("relabel-"):
        return measure_relabel(row, work, threads)
    backend = make_backend(row, work, threads)
    layout = backend.layout
    prefill = synthetic_spec(layout, PREFILL, True, 1, 0)
    backend.logits(synthetic_spec(layout, 16, True, 1, 9))  # warm-up
    t = time.perf_counter()
    backend.prefill(prefill)
    prefill_ms = 1000 * (time.perf_counter() - t)
    t = time.perf_counter()
    for k in range(1, STEPS + 1):
        spec = extended(prefill, k)
        if row == "torch-recompute":
            backend.logits(spec)
        else:
            backend.extend(spec)
    step_ms = 1000 * (time.perf_counter() - t) / STEPS
    nar = synthetic_spec(layout, NAR_LEN, False, 2, 1)
    t = time.perf_counter()
    backend.logits(nar)
    nar_ms = 1000 * (time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gguf = row.startswith(("llamacpp-", "ggml-"))
    size = gguf_path(work, row).stat().st_size / 2**20 if gguf else None
    floor = backbone_bytes(gguf_path(work, row)) / read_bandwidth() * 1000 if gguf else None
    return {"row": row, "prefill_300_ms": prefill_ms, "step_ms": step_ms, "steps_per_s": 1000 / step_ms,
            "nar_600_ms": nar_ms, "peak_rss_mb": rss, "file_mb": size, "floor_ms": floor}


def backbone_bytes(path: Path) -> int:
    """Bytes one AR step must read: every block weight of the GGUF (the head rows are read on the host)."""
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors if t.name.startswith("blk."))


def read_bandwidth() -> float:
    """Measured memory read bandwidth (bytes/s): numpy sum over 512 MiB, best of 3."""
    a = np.ones(128 << 20, dtype=np.float32)
    best = min(_timed(a.sum) for _ in range(3))
    return a.nbytes / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def prepare(work: Path, rows: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "valle_export.cli"]
    if any(r not in CODEC_ROWS for r in rows) and not (work / "ckpt" / names.CHECKPOINT_SFT).exists():
        subprocess.run(cli + ["demo-checkpoint", str(work / "ckpt"), "--size", "full", "-q"], check=True, env=env)
    if any(r == "onnx-fp32" for r in rows) and not (work / "onnx" / "backbone.onnx").exists():
        subprocess.run(cli + ["onnx", str(work / "ckpt"), str(work / "onnx")], check=True, env=env)
    for row in rows:
        if row.startswith(("llamacpp-", "ggml-", "relabel-")) and not gguf_path(work, row).exists():
            subprocess.run(cli + ["gguf", str(work / "ckpt"), "-o", str(gguf_path(work, row)), "--outtype",
                                  gguf_path(work, row).stem.split(".", 1)[1], "-q"], check=True, env=env)
    if "encodec-onnx" in rows and not (work / "codec" / "encodec_decoder.onnx").exists():
        subprocess.run(cli + ["encodec", str(work / "codec"), "-q"], check=True, env=env)
    if "vocos-onnx" in rows and not (work / "codec" / "vocos_decoder.onnx").exists():
        subprocess.run(cli + ["vocos", "-o", str(work / "codec"), "-q"], check=True, env=env)
    if any(r == "onnx-int8" for r in rows) and not (work / "onnx" / "backbone.int8.onnx").exists():
        subprocess.run(cli + ["onnx", str(work / "ckpt"), str(work / "onnx"), "--quantize", "int8"], check=True,
                       env=env)


def print_backbone_table(results: list[dict]) -> None:
    print("\nVALL-E released shape (d1024, 16 heads, 12 layers, vocab 17702)")
    print("| backend | prefill 300 (ms) | AR step at past 300 (ms) | steps/s | NAR pass 600 (ms) | peak RSS (MB) "
          "| file (MiB) | bandwidth floor per step (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "nar_600_ms" in r:
            size = f"{r['file_mb']:.0f}" if r.get("file_mb") else "-"
            floor = f"{r['floor_ms']:.1f} ({r['floor_ms'] / r['step_ms']:.0%})" if r.get("floor_ms") else "-"
            print(f"| {r['row']} | {r['prefill_300_ms']:.0f} | {r['step_ms']:.1f} | {r['steps_per_s']:.1f} | "
                  f"{r['nar_600_ms']:.0f} | {r['peak_rss_mb']:.0f} | {size} | {floor} |")


def print_table(results: list[dict], threads: int) -> None:
    print(f"\n{threads} threads, {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    if any("nar_600_ms" in r for r in results):
        print_backbone_table(results)
    relabel_rows = [r for r in results if "relabels" in r]
    if relabel_rows:
        print("\nllama.cpp, released configuration (GELU, segmented positions): real AR pass with relabelling")
        print("| file | positions | prefill (ms) | relabels | one relabel (ms) | AR step after (ms) | peak RSS (MB) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in relabel_rows:
            print(f"| {r['row']} | {r['positions']} | {r['prefill_ms']:.0f} | {r['relabels']} | {r['relabel_ms']:.1f} "
                  f"| {r['step_ms']:.1f} | {r['peak_rss_mb']:.0f} |")
    codec_rows = [r for r in results if "encode_rtf" in r]
    if codec_rows:
        print(f"\nCodecs at 24 kHz, 8 codebooks, {CODEC_SECONDS:.0f} s of audio (real-time factor: lower is faster; "
              "decode: best of 3)")
        print("| codec | decode RTF | decode 10 s (ms) | peak RSS decoding (MB) | encode RTF | peak RSS (MB) |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in codec_rows:
            encode = "-" if r["encode_rtf"] is None else f"{r['encode_rtf']:.3f}"
            print(f"| {r['row']} | {r['decode_rtf']:.3f} | {1000 * r['decode_rtf'] * CODEC_SECONDS:.0f} "
                  f"| {r['decode_peak_rss_mb']:.0f} | {encode} | {r['peak_rss_mb']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=REPO / "demo" / "bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default=",".join(ROWS + CODEC_ROWS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.work, args.threads)))
        return
    rows = args.rows.split(",")
    prepare(args.work, rows)
    results = []
    for row in rows:
        out = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--threads", str(args.threads),
                              "--child", row], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        if out.returncode != 0:
            print(f"{row}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  measured {row}", file=sys.stderr)
    print_table(results, args.threads)


if __name__ == "__main__":
    main()
