"""Batched serving benchmark (issue 20), one run, one printed table:

1. AR throughput: B rows stepping together through `ArBatch` (one call per step) for B = 1, 2, 4, 8, in AR
   tokens per second, against the single-stream cached loop (`pipeline.generate_ar`), and the ratio to the
   goal 0.7 x B x single stream; where the folder has an AR step graph, the same rows stepped on the backbone
   beside it (the engine's path before issue 22);
2. the engine under load: a fixed mix of requests (1-3 sentences, AR+NAR, greedy and sampled) submitted at
   once: time to first audio (median, p90), requests per minute, mean AR batch; and the same mix one request
   at a time;
3. one served text of `--text-seconds` of audio: bench_e2e's 62 phonemes as 1, 2 or 3 sentences (each with its
   start / end markers, the stop token masked so each sentence runs exactly its share of the frames, greedy),
   one request through the engine: wall time from submit to the last audio, RTF (decoding included), time
   to first audio (issue 22's real-time goal, as a server client sees it); and the same pieces through the
   Python API (`Synthesizer.speak_detailed`, the CLI's path) beside it.

    PYTHONPATH=. python benchmarks/bench_engine.py MODEL_DIR [--threads N] [--frames 60] [--requests 8]
                                                   [--parts throughput,load,text] [--text-seconds 10]

MODEL_DIR: an ONNX export with EnCodec graphs beside it (and tokenizer.json); fp32 unless --variant.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import threading
import time

import numpy as np

from runtimes.ar_batch import ArBatch, ArRow
from runtimes.engine import Audio, Engine, EngineConfig
from runtimes.pipeline import Conditioning, generate_ar
from runtimes.samplers import SamplerSettings
from runtimes.synthesize import SynthesisSettings, TextInput
from benchmarks.bench_e2e import NoStop
from runtimes.synthesizer import Synthesizer

MIX = ["həlˈoʊ wˈɜːld.", "ðɪs ɪz ɐ tˈɛst. ɡʊdbˈaɪ nˈaʊ!", "wˈʌn mˈɔːɹ tˈaɪm. ænd ɐɡˈɛn. ænd ðə lˈæst wˈʌn."]


def _cond(tts, i: int) -> Conditioning:
    rng = np.random.default_rng(i)
    phn = tts.pieces(_ipa(MIX[i % len(MIX)]), "none")[0][0]
    return Conditioning(phn, 0, rng.integers(0, 1024, (75, 8)).astype(np.int64))


def _ipa(text: str):
    from runtimes.synthesize import TextInput

    return TextInput(phonemes=text)


def ar_throughput(tts, batch: int, frames: int, step_graph: bool = True) -> float:
    """AR tokens/s of `batch` rows stepped together (one call per step) for `frames` steps; on an ONNX folder
    with an AR step graph, `step_graph=False` steps them on the backbone instead (as before issue 22)."""
    backend = tts.backend
    runner = getattr(backend, "step_runner", None)
    ar = ArBatch(backend)
    with NoStop(backend):
        ar.admit([ArRow(_cond(tts, i), frames) for i in range(batch)])
        backend.step_runner = runner if step_graph else None
        try:
            t, steps = time.perf_counter(), 0
            while len(ar):
                ar.step()
                steps += 1
            return batch * steps / (time.perf_counter() - t)
        finally:
            backend.step_runner = runner


def single_stream(tts, frames: int) -> float:
    """AR tokens/s of the unbatched cached loop (prefill excluded, as above)."""
    with NoStop(tts.backend):
        generate_ar(tts.backend, _cond(tts, 0), 2)  # warm
        t = time.perf_counter()
        codes = generate_ar(tts.backend, _cond(tts, 0), frames + 1)
        prefill_and_steps = time.perf_counter() - t
    t = time.perf_counter()
    generate_ar(tts.backend, _cond(tts, 0), 1)  # the prefill alone
    return (len(codes) - 1) / (prefill_and_steps - (time.perf_counter() - t))


def load(tts, requests: int, concurrent: bool, max_duration: float) -> dict:
    engine = Engine(tts, EngineConfig(max_rows=8))
    settings = [SynthesisSettings(modality="ar+nar", max_duration=max_duration, seed=i,
                                  ar=SamplerSettings(temperature=1.0 if i % 2 else 0.0, top_k=40))
                for i in range(requests)]
    firsts, done = [], []

    def client(i):
        t = time.perf_counter()
        first = None
        for event in engine.stream(tts.pieces(_ipa(MIX[i % len(MIX)]), "sentences"), None, settings[i]):
            if first is None:
                first = time.perf_counter() - t
        firsts.append(first)
        done.append(time.perf_counter())

    start = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(requests)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    else:
        for i in range(requests):
            client(i)
    elapsed = time.perf_counter() - start
    s = engine.stats
    engine.close()
    firsts.sort()
    return {"ttfa_median": statistics.median(firsts), "ttfa_p90": firsts[int(0.9 * (len(firsts) - 1))],
            "rpm": 60 * requests / elapsed, "mean_batch": s.ar_row_steps / max(1, s.ar_steps), "elapsed": elapsed}


def text_pieces(sentences: int) -> list[tuple[np.ndarray, int, str]]:
    """bench_e2e's 62 phonemes as `sentences` pieces (ids with start / end markers, language 0)."""
    from benchmarks.bench_e2e import conditioning, sentences as split

    return [(c.phn, c.lang, "") for c in split(conditioning(), sentences)]


def served_text(tts, sentences: int, seconds: float) -> dict:
    """One request of `seconds` of audio as `sentences` sentences through a fresh engine (see the docstring),
    and the same text through the Python API (`speak_detailed`, as the CLI's `synthesize`) beside it."""
    pieces = text_pieces(sentences)
    settings = SynthesisSettings(modality="ar+nar", max_duration=seconds / sentences, seed=0,
                                 ar=SamplerSettings(temperature=0.0))
    engine = Engine(tts, EngineConfig(max_rows=8))
    try:
        with NoStop(tts.backend):
            list(engine.stream(pieces[:1], None, dataclasses.replace(settings, max_duration=0.2)))  # warm
            t, first, samples = time.perf_counter(), None, 0
            for event in engine.stream(pieces, None, settings):
                if isinstance(event, Audio):
                    first = first if first is not None else time.perf_counter() - t
                    samples += len(event.audio)
            wall = time.perf_counter() - t
            tts.pieces = lambda inp, split_by: pieces  # the same pieces through the Python API
            try:
                t = time.perf_counter()
                speech = tts.speak_detailed(TextInput(phonemes="-"), None, settings)
                api = time.perf_counter() - t
            finally:
                del tts.pieces
    finally:
        engine.close()
    audio_s = samples / tts.codec.sample_rate
    assert len(speech.audio) == samples, "the engine and the Python API made different lengths"
    return {"wall": wall, "audio": audio_s, "rtf": wall / audio_s, "ttfa": first, "api": api}


def throughput_table(tts, frames: int) -> None:
    """Part 1's table."""
    one = single_stream(tts, frames)
    has_step = getattr(tts.backend, "step_runner", None) is not None
    print("\n| AR rows | AR tokens/s | vs single stream | goal 0.7 x B | on the backbone (tokens/s) "
          "| step graph gain |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| single stream (generate_ar) | {one:.1f} | 1.00x | - | - | - |")
    for b in (1, 2, 4, 8):
        tps = ar_throughput(tts, b, frames)
        base = ar_throughput(tts, b, frames, step_graph=False) if has_step else None
        gain = f"{base:.1f} | {tps / base:.2f}x" if base else "- | -"
        print(f"| {b} | {tps:.1f} | {tps / one:.2f}x | {'met' if tps >= 0.7 * b * one else 'not met'} | {gain} |")



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--variant", default="auto")
    ap.add_argument("--frames", type=int, default=60, help="AR steps per row in the throughput part")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-duration", type=float, default=2.0, help="seconds per sentence in the load part")
    ap.add_argument("--parts", default="throughput,load,text", help="which parts to run (comma-separated)")
    ap.add_argument("--text-seconds", type=float, default=10.0, help="audio of the served text (part 3)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    tts = Synthesizer.open(args.model, "onnx", variant=args.variant, threads=args.threads)
    print(f"model {args.model} ({tts.backend.path.name}), threads {args.threads or 'all'}")
    if "throughput" in parts:
        throughput_table(tts, args.frames)
    if "load" in parts:
        print(f"\n| {args.requests} requests (1-3 sentences, <= {args.max_duration} s each) | time to first audio "
              "median / p90 | requests/min | mean AR batch |")
        print("|---|---:|---:|---:|")
        for label, concurrent in (("one request at a time", False), ("all at once (engine)", True)):
            r = load(tts, args.requests, concurrent, args.max_duration)
            print(f"| {label} | {r['ttfa_median']:.2f} s / {r['ttfa_p90']:.2f} s | {r['rpm']:.1f} "
                  f"| {r['mean_batch']:.2f} |")
    if "text" in parts:
        print(f"\n| one text of {args.text_seconds:g} s ({tts.codec.decoder.name} decoding) | served: wall (s) | RTF "
              "| time to first audio (s) | Python API: wall (s) | RTF |")
        print("|---|---:|---:|---:|---:|---:|")
        for n in (1, 2, 3):
            r = served_text(tts, n, args.text_seconds)
            print(f"| {n} sentence{'s' if n > 1 else ''} ({r['audio']:.2f} s of audio) | {r['wall']:.2f} "
                  f"| {r['rtf']:.2f} | {r['ttfa']:.2f} | {r['api']:.2f} | {r['api'] / r['audio']:.2f} |")


if __name__ == "__main__":
    main()
