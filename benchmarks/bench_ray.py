"""Ray Serve throughput (issue 21): the same fixed load against 1 and 2 engine replicas on a local Ray
instance, one printed table.

Load: `--requests` seeded requests (2 sentences each, AR+NAR, sampled AR, pcm), `--concurrency` at a time,
over HTTP on loopback. Reported per configuration: requests per minute, seconds of audio per wall second,
time to first audio byte (median, p90), and how many engine replicas answered (X-Engine-Replica).

    PYTHONPATH=. python benchmarks/bench_ray.py MODEL_DIR [--configs 1x1,2x1,1x2] [--requests 24]

A config `RxT` is R engine replicas of T backend threads each (each replica reserves T CPUs). On one machine
replicas share its cores (and here, other engineers' jobs): read the ratios, not the absolute numbers.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import socket
import statistics
import time
import http.client

from runtimes.scale.config import APP_NAME, ScaleConfig

BODY = {"model": "tts-1", "voice": "alloy", "input": "həlˈoʊ wˈɜːld. ðɪs ɪz ɐ tˈɛst.", "phonemes": True,
        "modality": "ar+nar", "ar_temperature": 1.0, "response_format": "pcm"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one(port: int, body: dict) -> tuple[float, float, float, str]:
    """(time to first byte, total time, audio seconds, engine replica)."""
    t = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/audio/speech", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, (r.status, r.read()[:300])
    first = r.read1(65536)
    ttfb = time.perf_counter() - t
    n = len(first) + len(r.read())
    return ttfb, time.perf_counter() - t, n / 2 / 24000, r.headers.get("x-engine-replica", "")


def measure(model: str, replicas: int, threads: int, requests: int, concurrency: int, seconds: float) -> dict:
    import ray
    from ray import serve

    from runtimes.scale.app import application
    from runtimes.scale.launch import runtime_env

    ray.init(num_cpus=max(2, replicas * threads), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR", runtime_env=runtime_env(), _node_ip_address="127.0.0.1")
    try:
        port = _port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ScaleConfig(model=model, replicas=replicas, threads=threads, max_replicas_per_node=None,
                             max_rows=8, max_queue=64)
        serve.run(application(config), name=APP_NAME, route_prefix="/", blocking=False)
        bodies = [dict(BODY, seed=i, max_duration=seconds) for i in range(requests)]
        for body in bodies[:replicas * 2]:  # warm every replica's graphs
            _one(port, body)
        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(lambda b: _one(port, b), bodies))
        wall = time.perf_counter() - t
    finally:
        serve.shutdown()
        ray.shutdown()
    ttfb = sorted(r[0] for r in results)
    return {"config": f"{replicas} x {threads} thread(s)", "wall_s": wall, "req_per_min": 60 * requests / wall,
            "audio_per_s": sum(r[2] for r in results) / wall, "ttfa_median": statistics.median(ttfb),
            "ttfa_p90": ttfb[int(0.9 * (len(ttfb) - 1))], "replicas_used": len({r[3] for r in results})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--configs", default="1x1,2x1,1x2", help="RxT: R engine replicas of T threads each")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-duration", type=float, default=2.0, help="seconds per sentence (cap)")
    args = parser.parse_args()
    rows = []
    for spec in args.configs.split(","):
        replicas, threads = (int(x) for x in spec.split("x"))
        rows.append(measure(args.model, replicas, threads, args.requests, args.concurrency, args.max_duration))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.requests} requests, {args.concurrency} at a time, 2 sentences each, <= {args.max_duration} s "
          "per sentence\n")
    print("| engine replicas | requests/min | audio s per s | first audio median / p90 | replicas used |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['req_per_min']:.1f} | {r['audio_per_s']:.2f} | "
              f"{r['ttfa_median']:.2f} s / {r['ttfa_p90']:.2f} s | {r['replicas_used']} |")


if __name__ == "__main__":
    main()
