"""The HTTP layer: OpenAI's speech and voice routes, models, health, metrics and the page, over a `Speaker`.

Thin on purpose: validation and error shapes here, synthesis behind `speaker.Speaker` (the in-process engine,
or engine replicas on a Ray cluster: the same app is Ray Serve's ingress), formats in `formats`, voices in
`voices` (a folder here, a registry deployment on Ray). Every refusal is OpenAI's error body
`{"error": {"message", "type", "param", "code"}}`.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import threading
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from valle_export.errors import ValleExportError

from ..engine import Audio, Done, Failed, QueueFull
from ..synthesize import TextInput
from .formats import MEDIA_TYPES, Encoder, UnsupportedFormat
from .schemas import SpeechRequest
from .speaker import LocalSpeaker, Refused, Speaker, SpeechStream
from .voices import UnknownVoice

OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
PAGE = Path(__file__).with_name("static") / "index.html"


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    model_name: str = "valle"
    max_body_bytes: int = 1 << 20
    max_upload_bytes: int = 10 << 20  # OpenAI's limit on audio_sample


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers, self.kind = \
            status, message, param, code, headers, kind


def error_response(err: ApiError) -> JSONResponse:
    body = {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.code}}
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def _validation_message(err: ValidationError) -> tuple[str, str | None]:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if not isinstance(p, int)) or None
    return f"{where + ': ' if where else ''}{first.get('msg', 'invalid value')}", where


def busy_error(err: QueueFull) -> ApiError:
    return ApiError(429, str(err), code="rate_limit_exceeded", headers={"Retry-After": str(err.retry_after)},
                    kind="rate_limit_error")


def create_app(tts, engine, voices, config: ServerConfig = ServerConfig()) -> FastAPI:
    """The one-machine server: `tts` (a `Synthesizer`) and its `Engine` in this process."""
    return create_speech_app(LocalSpeaker(tts, engine), voices, config)


def create_speech_app(speaker: Speaker, voices, config: ServerConfig = ServerConfig()) -> FastAPI:
    """`voices`: a `VoiceStore` or anything with its methods (called on a worker thread: they may block)."""
    app = FastAPI(title="valle-export speech server", docs_url=None, redoc_url=None)
    app.state.ready = False
    models = (config.model_name, *OPENAI_MODELS)

    @app.exception_handler(ApiError)
    async def _api_error(request, err: ApiError):
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err: StarletteHTTPException):
        return error_response(ApiError(err.status_code, str(err.detail), code="not_found"
                                       if err.status_code == 404 else None))

    @app.on_event("startup")
    async def _warm_up():
        def run():
            speaker.warm_up()
            app.state.ready = True

        threading.Thread(target=run, daemon=True).start()

    async def _body(request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes is over the limit of {limit}")
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise ApiError(413, f"request body is over the limit of {limit} bytes")
        return data

    # --- speech ------------------------------------------------------------------------------------------
    @app.post("/v1/audio/speech")
    async def speech(request: Request):
        raw = await _body(request, config.max_body_bytes)
        try:
            req = SpeechRequest.model_validate(json.loads(raw or b"null"))
        except json.JSONDecodeError as err:
            raise ApiError(400, f"the body is not JSON ({err.msg})") from None
        except ValidationError as err:
            message, param = _validation_message(err)
            raise ApiError(400, message, param) from None
        if req.speed != 1.0:
            raise ApiError(400, "speed must be 1.0: VALL-E has no duration control", "speed")
        if req.model not in models:
            raise ApiError(400, f"unknown model {req.model!r} (this server has {', '.join(models)})", "model",
                           "model_not_found")
        try:
            encoder = Encoder(req.response_format, speaker.sample_rate)
        except UnsupportedFormat as err:
            raise ApiError(400, str(err), "response_format") from None
        try:
            prompt = await run_in_threadpool(voices.prompt, req.voice_id)
        except UnknownVoice as err:
            raise ApiError(404, str(err), "voice", "voice_not_found") from None
        except ValleExportError as err:
            raise ApiError(400, str(err), "voice") from None
        field = "phonemes" if req.phonemes else "text"
        text = TextInput(**{field: req.input}, language=req.language, text_language=req.text_language)
        try:
            stream = await speaker.start(text, prompt, req.settings())
        except QueueFull as err:
            raise busy_error(err) from None
        except Refused as err:
            raise ApiError(400, err.message, err.param) from None
        first = await stream.next()
        if isinstance(first, Failed):
            stream.close()
            raise ApiError(500, first.message, kind="server_error")
        sse = req.stream_format == "sse"
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Seed": str(stream.seed),
                   **stream.headers}
        return StreamingResponse(_relay(stream, encoder, first, sse),
                                 media_type="text/event-stream" if sse else MEDIA_TYPES[req.response_format],
                                 headers=headers)

    # --- voices ------------------------------------------------------------------------------------------
    @app.post("/v1/audio/voices")
    async def create_voice(request: Request):
        declared = request.headers.get("content-length")
        limit = config.max_upload_bytes + 64 * 1024
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"upload of {declared} bytes is over the limit of {config.max_upload_bytes}",
                           "audio_sample")
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as err:  # starlette's multipart parser raises its own errors for a bad body
            raise ApiError(400, f"expected multipart/form-data with name and audio_sample ({err})") from None
        name, sample = form.get("name"), form.get("audio_sample")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ApiError(400, "name: a non-empty string of at most 200 characters is required", "name")
        if sample is None or isinstance(sample, str):
            raise ApiError(400, "audio_sample: an audio file is required", "audio_sample")
        data = await sample.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise ApiError(413, f"audio_sample is over the limit of {config.max_upload_bytes} bytes", "audio_sample")
        suffix = Path(sample.filename or "").suffix
        try:
            return await run_in_threadpool(voices.create, name.strip(), data, suffix)
        except ValleExportError as err:
            raise ApiError(400, f"audio_sample: {err.problem}", "audio_sample") from None

    @app.get("/v1/audio/voices")
    async def list_voices():
        return {"voices": await run_in_threadpool(voices.list)}

    @app.get("/v1/audio/voices/{voice_id}")
    async def get_voice(voice_id: str):
        try:
            return await run_in_threadpool(voices.get, voice_id)
        except UnknownVoice as err:
            raise ApiError(404, str(err), "voice_id", "voice_not_found") from None

    @app.delete("/v1/audio/voices/{voice_id}")
    async def delete_voice(voice_id: str):
        try:
            await run_in_threadpool(voices.delete, voice_id)
        except UnknownVoice as err:
            raise ApiError(404, str(err), "voice_id", "voice_not_found") from None
        return {"id": voice_id, "object": "audio.voice.deleted", "deleted": True}

    # --- operations --------------------------------------------------------------------------------------
    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "valle-export"}
                                           for m in models]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if not app.state.ready:
            return JSONResponse({"status": "warming up"}, status_code=503)
        return {"status": "ready", **speaker.status()}

    @app.get("/metrics")
    async def metrics():
        return Response(speaker.metrics(), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app


class SynthesisAborted(Exception):
    """A request failed after its first audio left (the engine failed, or every engine replica was lost)."""


async def _relay(stream: SpeechStream, encoder: Encoder, first, sse: bool):
    """The response body: each sentence's bytes as soon as it is decoded (streamed formats), in order; a
    disconnect cancels the generator and with it the request's rows."""
    def frame(payload: dict) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    def out(chunk: bytes) -> bytes:
        if not sse:
            return chunk
        return frame({"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode()})

    event = first
    try:
        while True:
            if isinstance(event, Audio):
                chunk = encoder.feed(event.audio)
                if chunk:
                    yield out(chunk)
            elif isinstance(event, Done):
                tail = encoder.finish()
                if tail:
                    yield out(tail)
                if sse:
                    yield frame({"type": "speech.audio.done", "usage": event.summary["usage"]})
                return
            elif isinstance(event, Failed):
                if sse:
                    yield frame({"type": "error", "error": {"message": event.message, "type": "server_error"}})
                    return
                # raw audio has no way to say so: cut the connection (no final chunk), so no client takes a
                # short file for a whole one
                raise SynthesisAborted(event.message)
            event = await stream.next()
    finally:
        stream.close()
