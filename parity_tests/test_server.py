"""`valle-export serve` on loopback (issue 20): OpenAI's speech API through its own client, every format,
SSE, per-sentence streaming, voices, batching under concurrency, cancellation, 429 and bad bodies."""
from __future__ import annotations

import base64
import concurrent.futures
import http.client
import io
import json
import time
import urllib.parse

import numpy as np
import pytest

from .server_process import get, metric, post, running_server

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

SENTENCES = "həlˈoʊ wˈɜːld. ðɪs ɪz ɐ tˈɛst. ɡʊdbˈaɪ nˈaʊ!"
FAST = {"phonemes": True, "max_duration": 0.6, "seed": 0, "modality": "ar+nar", "ar_temperature": 0.0}


def speech(**fields) -> dict:
    return {"model": "tts-1", "voice": "alloy", "input": SENTENCES, **FAST, **fields}


@pytest.fixture(scope="module")
def server(served_model, tmp_path_factory):
    voices = tmp_path_factory.mktemp("voices")
    with running_server(served_model, voices / "store") as base:
        yield base


def _pcm(base, **fields) -> np.ndarray:
    status, _, body = post(base, "/v1/audio/speech", speech(response_format="pcm", **fields))
    assert status == 200, body[:300]
    return np.frombuffer(body, "<i2")


def test_every_format_decodes_to_the_right_length(server):
    import soundfile

    want = len(_pcm(server))
    assert want > 0 and want % 320 == 0
    for fmt in ("wav", "flac", "opus", "mp3"):
        status, headers, body = post(server, "/v1/audio/speech", speech(response_format=fmt))
        assert status == 200, (fmt, body[:300])
        if fmt == "wav":
            assert body[:4] == b"RIFF" and body[36:40] == b"data"
            n = (len(body) - 44) // 2
        else:
            audio, rate = soundfile.read(io.BytesIO(body), dtype="float32")
            assert rate == 24000, (fmt, rate)
            n = len(audio)
        slack = {"mp3": 1152 * 3, "opus": 960}.get(fmt, 0)  # encoder delay / padding of lossy frames
        assert want <= n <= want + slack if slack else n == want, f"{fmt}: {n} samples, want {want}"
    status, _, body = post(server, "/v1/audio/speech", speech(response_format="aac"))
    assert status == 400 and "aac" in json.loads(body)["error"]["message"]


def test_sse_streams_one_delta_per_sentence(server):
    status, headers, body = post(server, "/v1/audio/speech", speech(response_format="pcm", stream_format="sse"))
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) == 3 and events[-1]["type"] == "speech.audio.done", [e["type"] for e in events]
    pcm = b"".join(base64.b64decode(d["audio"]) for d in deltas)
    assert np.array_equal(np.frombuffer(pcm, "<i2"), _pcm(server))
    usage = events[-1]["usage"]
    assert usage["output_tokens"] * 320 * 2 == len(pcm) and usage["total_tokens"] > usage["output_tokens"]


def test_openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused")
    extra = dict(FAST)
    whole = client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCES, response_format="pcm",
                                       extra_body=extra)
    assert np.array_equal(np.frombuffer(whole.content, "<i2"), _pcm(server))
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice={"id": "alloy"}, input=SENTENCES,
                                                            response_format="wav", extra_body=extra) as r:
        streamed = b"".join(r.iter_bytes())
    assert streamed[:4] == b"RIFF" and len(streamed) == 44 + len(whole.content)
    with pytest.raises(openai.BadRequestError, match="speed must be 1.0"):
        client.audio.speech.create(model="tts-1", voice="alloy", input="a", speed=1.5, extra_body=extra)
    assert {m.id for m in client.models.list()} >= {"valle", "tts-1"}


def test_eight_concurrent_requests_equal_sequential(server):
    bodies = [speech(response_format="pcm", input=SENTENCES.split(". ")[i % 3], seed=i,
                     ar_temperature=0.0 if i % 2 else 1.0) for i in range(8)]
    sequential = [post(server, "/v1/audio/speech", b)[2] for b in bodies]
    steps, rows = metric(server, "valle_ar_steps_total"), metric(server, "valle_ar_batch_size_mean")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda b: post(server, "/v1/audio/speech", b)[2], bodies))
    for i, (a, b) in enumerate(zip(sequential, together)):
        assert len(a) > 0 and a == b, f"request {i}: {len(a)} vs {len(b)} bytes"
    assert metric(server, "valle_ar_batch_size_mean") > rows, "concurrent requests were not batched"
    assert metric(server, "valle_ar_steps_total") > steps


def test_disconnect_cancels(server):
    cancelled = metric(server, 'valle_requests_total{outcome="cancelled"}')
    host, port = urllib.parse.urlsplit(server).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = speech(response_format="pcm", input=" ".join([SENTENCES] * 6), ar_temperature=1.0, max_duration=3.0)
    conn.request("POST", "/v1/audio/speech", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.read1(1024)
    conn.close()
    deadline = time.time() + 20
    while time.time() < deadline and (metric(server, "valle_active_rows") > 0 or metric(
            server, 'valle_requests_total{outcome="cancelled"}') == cancelled):
        time.sleep(0.1)
    assert metric(server, 'valle_requests_total{outcome="cancelled"}') == cancelled + 1
    assert metric(server, "valle_active_rows") == 0


@pytest.mark.parametrize("body, status, needle", [
    ({"voice": "alloy", "input": "a"}, 400, "model"),
    (speech(input=""), 400, "input"),
    (speech(input="a" * 4097), 400, "4096"),
    (speech(speed=0.5), 400, "speed must be 1.0"),
    (speech(response_format="ogg"), 400, "response_format"),
    (speech(top_p=2.0), 400, "top_p"),
    (speech(unknown_field=1), 400, "unknown_field"),
    (speech(model="gpt-9"), 400, "unknown model"),
    (speech(voice="voice_0123456789abcdef"), 404, "no voice"),
    (speech(voice={"name": "x"}), 400, "voice"),
    (b"{not json", 400, "not JSON"),
    (speech(phonemes=False, input="x", language="xx-nope", text_language="xx-nope"), 400, ""),
])
def test_bad_bodies_get_openai_errors(server, body, status, needle):
    got, _, raw = post(server, "/v1/audio/speech", body)
    err = json.loads(raw)["error"]
    assert got == status and needle in err["message"] and err["type"], (got, err)


def test_body_limit(server):
    """A body declared over the limit is refused from its header, before it is read: the client sends only the
    headers (sending 2 MiB into a server that already answered would race with its close: a broken pipe)."""
    host, port = urllib.parse.urlsplit(server).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", "/v1/audio/speech")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    assert r.status == 413 and "limit" in json.loads(raw)["error"]["message"], (r.status, raw[:300])


def test_voices_upload_use_list_delete(server, tmp_path):
    import soundfile

    buf = io.BytesIO()
    t = np.arange(16000) / 16000
    soundfile.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, format="WAV")
    boundary = "valleboundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nme\r\n--{boundary}\r\n"
            f"Content-Disposition: form-data; name=\"audio_sample\"; filename=\"me.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + buf.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    host, port = urllib.parse.urlsplit(server).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/audio/voices", form, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    r = conn.getresponse()
    info = json.loads(r.read())
    assert r.status == 200 and info["id"].startswith("voice_") and info["name"] == "me", info
    listed = json.loads(get(server, "/v1/audio/voices")[1])["voices"]
    assert any(v["id"] == info["id"] and v["name"] == "me" for v in listed) and any(v["id"] == "alloy" for v in listed)
    with_voice = _pcm(server, voice={"id": info["id"]}, input="həlˈoʊ.")
    assert len(with_voice) and not np.array_equal(with_voice, _pcm(server, input="həlˈoʊ."))
    assert get(server, f"/v1/audio/voices/{info['id']}")[0] == 200
    assert get(server, f"/v1/audio/voices/{info['id']}", "DELETE")[0] == 200
    assert get(server, f"/v1/audio/voices/{info['id']}")[0] == 404
    conn.request("POST", "/v1/audio/voices", b"junk", {"Content-Type": "multipart/form-data; boundary=zz"})
    r = conn.getresponse()
    assert r.status == 400 and "audio_sample" in json.loads(r.read())["error"]["message"]


def test_uploaded_voice_survives_a_restart(served_model, tmp_path):
    """The store is a folder: a new server process on it knows the voices of the last one."""
    from runtimes.codec import OnnxCodec
    from runtimes.server.voices import VoiceStore
    from valle_export import wav

    t = np.arange(12000) / 24000
    wav.write_wav(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * 330 * t), 24000)
    codec = OnnxCodec(served_model)
    first = VoiceStore(tmp_path / "store", codec)
    info = first.create("kept", (tmp_path / "a.wav").read_bytes(), ".wav")
    again = VoiceStore(tmp_path / "store", codec)
    assert again.get(info["id"])["name"] == "kept"
    assert np.array_equal(again.prompt(info["id"]), first.prompt(info["id"]))


def test_operations(server):
    assert json.loads(get(server, "/health")[1]) == {"status": "ok"}
    assert json.loads(get(server, "/ready")[1])["batched"] is True
    text = get(server, "/metrics")[1].decode()
    for name in ("valle_queue_depth", "valle_ar_batch_size", "valle_ar_row_steps_per_second",
                 "valle_time_to_first_audio_seconds", "valle_real_time_factor", "valle_requests_rejected_total"):
        assert f"\n{name} " in text, name
    status, page = get(server, "/")
    assert status == 200 and b"<textarea" in page


def test_overfull_queue_answers_429(served_model, tmp_path):
    with running_server(served_model, tmp_path / "v", "--max-rows", "1", "--max-queue", "1") as base:
        body = speech(response_format="pcm", ar_temperature=1.0, max_duration=3.0, input="həlˈoʊ wˈɜːld.")
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: post(base, "/v1/audio/speech", body), range(6)))
        refused = [r for r in results if r[0] == 429]
        assert refused and any(r[0] == 200 for r in results), [r[0] for r in results]
        assert int(refused[0][1]["retry-after"]) >= 1
        assert json.loads(refused[0][2])["error"]["type"] == "rate_limit_error"
        assert metric(base, "valle_requests_rejected_total") == len(refused)
