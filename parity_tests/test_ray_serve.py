"""The speech server on Ray Serve (issue 21): `valle-export serve --ray` as a local Ray instance on loopback
(same answers as the one-machine engine, errors, 429), a three-node `ray.cluster_utils.Cluster` on this
machine (requests answered on several nodes, a voice uploaded once used through every replica, an engine
replica killed under load), plus the checks that need no Ray (arguments, limits, CLI errors, the KubeRay
manifest). Every Ray process a test starts is stopped (and checked gone) before the module ends.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import importlib
import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from .server_process import REPO, free_port, get, post, serving_process

try:
    import ray  # noqa: F401
    from ray import serve  # noqa: F401
    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False



def needs_ray(test):
    """Marked `ray` (deselect with -m 'not ray'; about 2 minutes for the file on 2 cores); skipped without ray."""
    skip = pytest.mark.skipif(not HAVE_RAY, reason="needs the ray extra: pip install 'valle-export[ray]'")
    return pytest.mark.ray(skip(test))


SENTENCES = "həlˈoʊ wˈɜːld. ðɪs ɪz ɐ tˈɛst. ɡʊdbˈaɪ nˈaʊ!"
FAST = {"phonemes": True, "max_duration": 0.6, "seed": 0, "modality": "ar+nar", "ar_temperature": 0.0}


def speech(**fields) -> dict:
    return {"model": "tts-1", "voice": "alloy", "input": SENTENCES, "response_format": "pcm", **FAST, **fields}


def ray_pids() -> set[int]:
    """Ray's daemons on this machine (gcs_server, raylet): a test must leave none of its own behind."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().split(b"\0")[0]
                if cmd.endswith((b"/raylet", b"/gcs_server")):
                    found.add(int(entry.name))
    return found


def assert_gone(before: set[int], timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while ray_pids() - before and time.time() < deadline:
        time.sleep(0.5)
    assert not ray_pids() - before, f"Ray processes left running: {sorted(ray_pids() - before)}"


def expected_pcm(model: Path, body: dict, prompt=None) -> bytes:
    """What the one-machine engine answers for a seeded body (the Ray path must give the same bytes)."""
    from runtimes.engine import Engine
    from runtimes.server.formats import Encoder
    from runtimes.server.schemas import SpeechRequest
    from runtimes.synthesize import TextInput
    from runtimes.synthesizer import Synthesizer

    req = SpeechRequest.model_validate(body)
    tts = Synthesizer.open(model, "onnx", threads=1)
    engine = Engine(tts)
    try:
        pieces = tts.pieces(TextInput(phonemes=req.input), req.split_text_by)
        encoder, out = Encoder("pcm", tts.codec.sample_rate), b""
        for event in engine.stream(pieces, prompt, req.settings()):
            if hasattr(event, "audio"):
                out += encoder.feed(event.audio)
        return out + encoder.finish()
    finally:
        engine.close()


def wav_upload(base: str, name: str, hz: float) -> dict:
    import soundfile

    buf = io.BytesIO()
    t = np.arange(16000) / 16000
    soundfile.write(buf, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 16000, format="WAV")
    boundary = "valleboundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{name}\r\n--{boundary}\r\n"
            f"Content-Disposition: form-data; name=\"audio_sample\"; filename=\"v.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + buf.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/audio/voices", form, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    r = conn.getresponse()
    info = json.loads(r.read())
    assert r.status == 200, info
    return info


# --- no Ray needed ---------------------------------------------------------------------------------------
def test_arguments_and_limits():
    from runtimes.scale.app import engine_options, ingress_options
    from runtimes.scale.config import from_args, parse_autoscale
    from valle_export.errors import BadInput

    config = from_args({"model": "/m", "replicas": "2", "max_rows": "4", "max_queue": "8", "threads": "2"})
    assert (config.replicas, config.engine_ongoing, config.engine_queued) == (2, 12, 8)
    options = engine_options(config)
    assert options["num_replicas"] == 2 and options["max_ongoing_requests"] == 12
    assert options["max_queued_requests"] == 8 and options["ray_actor_options"] == {"num_cpus": 2}
    assert options["max_replicas_per_node"] == 1
    assert ingress_options(config)["max_ongoing_requests"] > 2 * 12  # the engines' 429 comes first
    auto = engine_options(from_args({"model": "/m", "autoscale": "1:4", "max_rows": 8}))
    assert "num_replicas" not in auto and auto["autoscaling_config"]["max_replicas"] == 4
    assert auto["autoscaling_config"]["target_ongoing_requests"] == 8
    assert parse_autoscale("0:3") == (0, 3)
    for bad in ("3", "2:1", "a:b", "0:0"):
        with pytest.raises(BadInput, match="autoscale"):
            parse_autoscale(bad)
    with pytest.raises(BadInput, match="unknown argument.*replica"):
        from_args({"model": "/m", "replica": 2})
    with pytest.raises(BadInput, match="model=PATH"):
        from_args({"replicas": 2})


@needs_ray
def test_deployment_options_are_valid_for_serve():
    """Serve validates the options at `.options()` (no Ray started): autoscaling, limits, placement."""
    from ray import serve

    from runtimes.scale.app import engine_options, ingress_options, registry_options
    from runtimes.scale.config import from_args
    from runtimes.scale.replicas import EngineReplica

    for args in ({"model": "/m", "autoscale": "0:4"}, {"model": "/m", "replicas": 3}):
        config = from_args(args)
        for options in (engine_options(config), ingress_options(config), registry_options(config)):
            deployment = serve.deployment(EngineReplica, name="Engine").options(**options)
            assert deployment._deployment_config.max_ongoing_requests == options["max_ongoing_requests"]


@pytest.mark.parametrize("args, needle", [
    (["--replicas", "2"], "need --ray"),
    (["--autoscale", "1:2"], "need --ray"),
    (["--ray", "--replicas", "2", "--autoscale", "1:2"], "not both"),
    (["--ray", "--autoscale", "2:1"], "MIN <= MAX"),
    (["--ray", "--replicas", "0"], "0"),
])
def test_cli_errors_are_one_line(tmp_path, args, needle):
    from valle_export.cli import main

    r = CliRunner().invoke(main, ["serve", str(tmp_path), *args])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.output


def test_missing_ray_is_one_line_naming_the_extra():
    from valle_export.extras import missing_extra

    err = ModuleNotFoundError("No module named 'ray'", name="ray")
    assert missing_extra(err) == "this command needs ray, which is not installed: pip install 'valle-export[ray]'"


def test_kuberay_manifest_and_serve_config():
    """The manifests parse, bind loopback only where they should, and name an import path that exists."""
    yaml = pytest.importorskip("yaml")
    from runtimes.scale.config import from_args

    manifest = yaml.safe_load((REPO / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    assert manifest["apiVersion"].startswith("ray.io/") and manifest["kind"] == "RayService"
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    local = yaml.safe_load((REPO / "deploy" / "ray" / "serve.yaml").read_text())
    assert local["http_options"]["host"] == "127.0.0.1"
    for config in (serve_config, local):
        (app,) = config["applications"]
        module, _, attr = app["import_path"].partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), app["import_path"]
        from_args(app["args"])  # every argument is known and well-typed
    spec = manifest["spec"]["rayClusterConfig"]
    assert spec["headGroupSpec"]["rayStartParams"] and spec["workerGroupSpecs"][0]["replicas"] >= 1


# --- a local Ray instance on loopback, through the CLI ----------------------------------------------------
def ray_cli_server(model: Path, voices: Path, *extra: str, ready_s: float = 150.0):
    """`valle-export serve MODEL --ray` in its own process group; SIGTERM (-> serve and ray shutdown), and
    SIGKILL only if that hangs."""
    return serving_process([str(model), "--ray", "--voices-dir", str(voices), *extra], voices.parent / "ray-serve",
                           "serve --ray", ready_s, env={"RAY_USAGE_STATS_ENABLED": "0"}, poll_s=0.5, stop_s=60.0)


def non_loopback_address() -> str | None:
    import socket

    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        address = s.getsockname()[0]
        return None if address.startswith("127.") else address
    return None


@needs_ray
def test_local_ray_on_loopback_answers_as_one_machine(served_model, tmp_path):
    before = ray_pids()
    want = expected_pcm(served_model, speech())
    with ray_cli_server(served_model, tmp_path / "voices", "--max-rows", "1", "--max-queue", "1") as base:
        ready = json.loads(get(base, "/ready")[1])
        assert ready["backend"] == "ray"
        status, headers, body = post(base, "/v1/audio/speech", speech())
        assert status == 200 and body == want and headers["x-seed"] == "0" and headers["x-served-by"]
        status, headers, body = post(base, "/v1/audio/speech", speech(stream_format="sse"))
        events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
        assert [e["type"] for e in events] == ["speech.audio.delta"] * 3 + ["speech.audio.done"]
        for body, code, needle in ((speech(speed=2.0), 400, "speed"), (speech(top_p=3), 400, "top_p"),
                                   (speech(voice="voice_0123456789abcdef"), 404, "no voice"),
                                   (speech(phonemes=False, input="x", language="xx-nope"), 400, "")):
            status, _, raw = post(base, "/v1/audio/speech", body)
            err = json.loads(raw)["error"]
            assert status == code and needle in err["message"] and err["type"], (status, err)
        assert {m["id"] for m in json.loads(get(base, "/v1/models")[1])["data"]} >= {"valle", "tts-1"}
        # overload: 1 row + 1 queued in the engine, 4 in the handle queue; the rest are a fast 429
        slow = speech(ar_temperature=1.0, max_duration=3.0, input="həlˈoʊ wˈɜːld.")
        t = time.time()
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda _: post(base, "/v1/audio/speech", slow, timeout=120), range(10)))
        refused = [r for r in results if r[0] == 429]
        assert refused and all(r[0] in (200, 429) for r in results), [r[0] for r in results]
        assert json.loads(refused[0][2])["error"]["type"] == "rate_limit_error" and refused[0][1]["retry-after"]
        assert time.time() - t < 120
        assert "valle_requests_rejected_total" in get(base, "/metrics")[1].decode()
        address = non_loopback_address()
        if address:  # Serve binds every interface unless told: this one must not
            with pytest.raises(OSError):
                http.client.HTTPConnection(address, int(base.rsplit(":", 1)[1]), timeout=3).request("GET", "/")
    assert_gone(before)


# --- three nodes on one machine ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(served_model, tmp_path_factory):
    """Head + 2 nodes (1 CPU each), 3 engine replicas (one per node), 2 ingress replicas, one registry."""
    if not HAVE_RAY:
        pytest.skip("needs the ray extra: pip install 'valle-export[ray]'")
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from runtimes.scale.app import application
    from runtimes.scale.config import APP_NAME, ScaleConfig
    from runtimes.scale.launch import runtime_env

    before = ray_pids()
    # the nodes' processes inherit this: the head's proxy would otherwise send every request it can to the
    # ingress replica on its own node, and "uploaded through one, used through another" could go untested
    saved = {k: os.environ.get(k) for k in ("RAY_USAGE_STATS_ENABLED", "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING")}
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING="0")
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(2):
            nodes.add_node(num_cpus=1)
        ray.init(address=nodes.address, log_to_driver=False, logging_level="ERROR", runtime_env=runtime_env())
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        config = ScaleConfig(model=str(served_model), voices_dir=str(tmp_path_factory.mktemp("ray-voices")),
                             replicas=3, ingress_replicas=2, threads=1)
        serve.run(application(config), name=APP_NAME, route_prefix="/", blocking=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        with contextlib.suppress(Exception):
            ray.shutdown()
        nodes.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        assert_gone(before)


def concurrently(base: str, bodies: list[dict], timeout: float = 120.0) -> list[tuple[int, dict, bytes]]:
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: post(base, "/v1/audio/speech", b, timeout=timeout), bodies))


def ingress_counter(base: str, name: str, replicas: int = 2) -> float:
    """A counter summed over the ingress replicas (each answers /metrics for itself)."""
    seen: dict[str, float] = {}
    for _ in range(40):
        text = get(base, "/metrics")[1].decode()
        replica = text.split('valle_ingress_info{replica="', 1)[1].split('"', 1)[0]
        seen[replica] = next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))
        if len(seen) == replicas:
            break
    return sum(seen.values())


@needs_ray
def test_concurrent_requests_are_answered_on_several_nodes(cluster, served_model):
    want = expected_pcm(served_model, speech())
    results = concurrently(cluster, [speech() for _ in range(12)])
    assert all(status == 200 and body == want for status, _, body in results), [r[0] for r in results]
    nodes = {headers["x-served-by"] for _, headers, _ in results}
    assert len(nodes) >= 2, f"every request was answered on one node: {nodes}"


@needs_ray
def test_voice_uploaded_through_one_replica_is_usable_through_every_other(cluster):
    info = wav_upload(cluster, "shared", 330.0)
    with_voice = [speech(voice={"id": info["id"]}, input="həlˈoʊ.") for _ in range(12)]
    results: list = []
    for _ in range(6):  # Serve picks the ingress replica: repeat (bounded) until both have answered
        results += concurrently(cluster, with_voice)
        if len({h.get("x-ingress-replica") for _, h, _ in results}) == 2:
            break
    assert all(status == 200 for status, _, _ in results), [(r[0], r[2][:200]) for r in results]
    bodies = {body for _, _, body in results}
    assert len(bodies) == 1, "the same seeded request gave different audio on different replicas"
    status, _, plain = post(cluster, "/v1/audio/speech", speech(input="həlˈoʊ."))
    assert status == 200 and plain not in bodies, "the voice's prompt was not used"
    assert len({h["x-ingress-replica"] for _, h, _ in results}) == 2, "one ingress replica answered everything"
    assert len({h["x-served-by"] for _, h, _ in results}) >= 2
    for _ in range(4):  # the listing is the registry's, whichever ingress answers
        assert any(v["id"] == info["id"] for v in json.loads(get(cluster, "/v1/audio/voices")[1])["voices"])


@needs_ray
def test_engine_replica_killed_under_load(cluster, served_model):
    """Requests in flight on a killed replica are resubmitted elsewhere (same seed: same audio) or fail
    cleanly; none hangs; later requests succeed."""
    import ray

    body = speech(ar_temperature=1.0, max_duration=3.0, seed=7)
    want = post(cluster, "/v1/audio/speech", body)[2]
    started: list[str] = []
    lock = threading.Lock()

    def one(_):
        host, port = cluster.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        conn.request("POST", "/v1/audio/speech", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        with lock:
            started.append(r.headers.get("x-engine-replica", ""))
        try:
            return r.status, r.read()
        except (http.client.IncompleteRead, ConnectionError) as err:
            return "cut", repr(err).encode()

    t = time.time()
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        futures = [pool.submit(one, i) for i in range(9)]
        while not started and time.time() - t < 60:
            time.sleep(0.05)
        victim = started[0]
        actor = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                     if a["name"].startswith("SERVE_REPLICA::") and "#Engine#" in a["name"]
                     and a["name"].endswith(victim))
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
        results = [f.result(timeout=150) for f in futures]
    assert time.time() - t < 150
    ok = [b for status, b in results if status == 200 and b == want]
    clean_failures = [r for r in results if r[0] in ("cut", 500, 503)]
    assert len(ok) + len(clean_failures) == len(results), [(r[0], len(r[1])) for r in results]
    print(f"\nkilled replica {victim}: {len(ok)} of 9 whole and identical, {len(clean_failures)} failed cleanly, "
          f"{ingress_counter(cluster, 'valle_engine_retries_total'):.0f} retries")
    assert len(ok) >= 6, f"only {len(ok)} of 9 requests succeeded"
    assert clean_failures or ingress_counter(cluster, "valle_engine_retries_total") > 0, "nothing was retried"
    later = concurrently(cluster, [body] * 4)
    assert all(status == 200 and b == want for status, _, b in later), [r[0] for r in later]
