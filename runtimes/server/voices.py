"""Voices a client may name in `voice`: uploaded ones (encoded once to prompt codes and kept on disk, so an
id survives a restart), files the operator configured (`--voice NAME=FILE`), and OpenAI's built-in names,
which map to a configured voice or, by default, to no prompt (a random voice, as the original without one).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from valle_export.errors import BadInput

from ..voice import Voice, check_voice, encode_voice, load_voice, save_voice

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
                 "marin", "cedar")
_ID = re.compile(r"^voice_[0-9a-f]{16}$")
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,5}$")  # an upload's extension helps soundfile; nothing else is kept


class UnknownVoice(Exception):
    pass


class VoiceStore:
    """`<folder>/<id>.npz` (codes, `runtimes.voice` format) + `<id>.json` ({id, name, created_at})."""

    def __init__(self, folder: str | os.PathLike, codec, configured: dict[str, Voice] | None = None):
        self.folder, self.codec = Path(folder), codec
        self.folder.mkdir(parents=True, exist_ok=True)
        self.configured = dict(configured or {})
        self._lock = threading.Lock()

    def create(self, name: str, data: bytes, suffix: str, prompt_seconds: float = 3.0) -> dict:
        """Encode an uploaded clip once (any format soundfile reads) and keep its codes."""
        with tempfile.TemporaryDirectory() as tmp:
            clip = Path(tmp) / ("upload" + (suffix if _SUFFIX.match(suffix) else ""))
            clip.write_bytes(data)
            voice = encode_voice(self.codec, [clip], prompt_seconds)
        info = {"object": "audio.voice", "id": f"voice_{secrets.token_hex(8)}", "name": name,
                "created_at": int(time.time())}
        with self._lock:
            save_voice(voice, self.folder / f"{info['id']}.npz")
            (self.folder / f"{info['id']}.json").write_text(json.dumps(info), encoding="utf-8")
        return info

    def list(self) -> list[dict]:
        stored = [self._info(p.stem) for p in sorted(self.folder.glob("voice_*.json"))]
        named = [{"object": "audio.voice", "id": n, "name": n, "created_at": 0} for n in self.configured]
        builtin = [{"object": "audio.voice", "id": n, "name": n, "created_at": 0}
                   for n in OPENAI_VOICES if n not in self.configured]
        return stored + named + builtin

    def get(self, voice_id: str) -> dict:
        if voice_id in self.configured or voice_id in OPENAI_VOICES:
            return {"object": "audio.voice", "id": voice_id, "name": voice_id, "created_at": 0}
        return self._info(voice_id)

    def delete(self, voice_id: str) -> None:
        self._info(voice_id)
        with self._lock:
            for ext in (".npz", ".json"):
                (self.folder / f"{voice_id}{ext}").unlink(missing_ok=True)

    def prompt(self, voice_id: str) -> np.ndarray | None:
        """The prompt codes of a voice; None for a built-in name nobody configured (no prompt)."""
        if voice_id in self.configured:
            return self.configured[voice_id].codes
        if voice_id in OPENAI_VOICES:
            return None
        self._info(voice_id)
        voice = load_voice(self.folder / f"{voice_id}.npz")
        check_voice(voice, self.codec)
        return voice.codes

    def _info(self, voice_id: str) -> dict:
        path = self.folder / f"{voice_id}.json"
        if not _ID.match(voice_id) or not path.is_file():
            raise UnknownVoice(f"no voice {voice_id!r} (GET /v1/audio/voices lists them)")
        return json.loads(path.read_text(encoding="utf-8"))


def configured_voice(codec, spec: str) -> tuple[str, Voice]:
    """`NAME=FILE` from the command line: a voice file (.npz) or an audio clip (encoded at start)."""
    name, sep, file = spec.partition("=")
    if not sep or not name or not file:
        raise BadInput(f"--voice takes NAME=FILE, got {spec!r}")
    if Path(file).suffix == ".npz":
        voice = load_voice(file)
        check_voice(voice, codec, file)
        return name, voice
    return name, encode_voice(codec, [file])
