"""Folder kinds told apart, ONNX folders checked against their own layout and weights, codec sources checked
to be EnCodec, and WAV input bounded (header checked before any allocation, the prompt trimmed before
resampling). Real exports and real files; one line, exit code 2, nothing written."""
from __future__ import annotations

import json
import math
import shutil
import struct
import tracemalloc

import numpy as np
import pytest

from valle_export import wav
from valle_export.errors import BadInput

from .bad_input_checks import refused
from .conftest import DEMO_VARIANTS


# --- folder kinds ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["convert", "onnx", "gguf"])
def test_an_onnx_folder_is_not_a_checkpoint(tmp_path, onnx_export, command):
    folder = onnx_export()
    out = ["-o", tmp_path / "o.gguf"] if command == "gguf" else [tmp_path / "o"]
    refused([tmp_path, folder], command, folder, *out, "-q", needles=(str(folder), "is an ONNX export folder"))


@pytest.mark.parametrize("command", ["encodec", "encodec-cpp"])
@pytest.mark.parametrize("source", ["uniform", "checkpoint", "empty", "llama config"])
def test_codec_source_must_be_encodec(tmp_path, uniform, demo_checkpoint, command, source):
    """A folder that is not a transformers EnCodec folder is refused (it used to export fresh weights)."""
    if source == "uniform":
        folder, needle = uniform, "it is a uniform folder"
    elif source == "checkpoint":
        folder, needle = demo_checkpoint(), "it is a checkpoint folder"
    else:
        folder = tmp_path / "src"
        folder.mkdir()
        if source == "llama config":
            (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
        needle = "not a transformers EnCodec folder"
    out = ["-o", tmp_path / "o.bin"] if command == "encodec-cpp" else [tmp_path / "o"]
    refused([tmp_path, folder], command, folder, *out, "-q", needles=(str(folder), needle))


# --- ONNX folders: the backbone must belong to the folder --------------------------------------------------

def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _synthesize(model, tmp_path):
    return ("synthesize", model, "--phoneme-ids", "1,5,9,2", "--out", tmp_path / "o.wav", "-q")


@pytest.mark.parametrize("other", ["another seed", "another variant"])
def test_onnx_backbone_from_another_model_is_refused(tmp_path, onnx_export, demo_checkpoint, other):
    mine = _copy(onnx_export(), tmp_path / "model")
    if other == "another seed":  # same shapes and layout: only the weights fingerprint tells them apart
        theirs, needle = onnx_export(checkpoint=demo_checkpoint(seed=1)), "weights fingerprint differs"
    else:
        theirs, needle = onnx_export(DEMO_VARIANTS[1]), "layout differs"
    shutil.copyfile(theirs / "backbone.onnx", mine / "backbone.onnx")
    refused([tmp_path], *_synthesize(mine, tmp_path), needles=("backbone.onnx", needle, "another model"))


def test_onnx_layout_edited_is_refused(tmp_path, onnx_export):
    mine = _copy(onnx_export(), tmp_path / "model")
    layout = json.loads((mine / "valle_layout.json").read_text())
    layout["noncausal_masks"] = not layout["noncausal_masks"]
    (mine / "valle_layout.json").write_text(json.dumps(layout))
    refused([tmp_path], *_synthesize(mine, tmp_path), needles=("backbone.onnx", "layout differs"))


def test_onnx_runtime_weights_with_nan_are_refused(tmp_path, onnx_export):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    mine = _copy(onnx_export(), tmp_path / "model")
    path = mine / "valle_weights.safetensors"
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    t = load_file(str(path))
    t["lm_head.weight"][3, 3] = math.nan
    save_file(t, str(path), metadata=meta)
    refused([tmp_path], *_synthesize(mine, tmp_path), needles=("valle_weights.safetensors", "lm_head.weight has NaN"))


# --- WAV input ---------------------------------------------------------------------------------------------

def _wav_bytes(rate=24000, channels=1, bits=16, fmt=1, frames=2400, data_size=None, riff=b"RIFF", fmt_len=16):
    data = b"\x00" * (frames * channels * max(bits, 8) // 8)
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, (rate * channels * bits // 8) & 0xFFFFFFFF,
                            (channels * bits // 8) & 0xFFFF, bits)[:fmt_len]
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + b"data"
            + struct.pack("<I", len(data) if data_size is None else data_size) + data)
    return riff + struct.pack("<I", len(body)) + body


BAD_WAVS = {
    "4 GHz": (_wav_bytes(rate=4_000_000_000), "sample rate 4000000000 Hz is outside"),
    "1 Hz": (_wav_bytes(rate=1), "sample rate 1 Hz is outside"),
    "0 Hz": (_wav_bytes(rate=0), "sample rate 0 Hz is outside"),
    "no channels": (_wav_bytes(channels=0), "0 channels"),
    "1000 channels": (_wav_bytes(channels=1000, frames=1), "1000 channels"),
    "12-bit": (_wav_bytes(bits=12), "unsupported WAV encoding"),
    "a-law": (_wav_bytes(fmt=6, bits=8), "unsupported WAV encoding"),
    "short fmt": (_wav_bytes(fmt_len=10), "short 'fmt' chunk"),
    "RIFX": (_wav_bytes(riff=b"RIFX"), "RIFX"),
    "text": (b"just some text, not audio", "not an audio file"),
    "no data chunk": (_wav_bytes()[:36], "no 'data' chunk"),
}


@pytest.mark.parametrize("case", sorted(BAD_WAVS))
def test_bad_prompt_wav_refused_before_loading_the_model(tmp_path, demo_checkpoint, case):
    raw, needle = BAD_WAVS[case]
    (tmp_path / "voice.wav").write_bytes(raw)
    refused([tmp_path], "synthesize", demo_checkpoint(), "--backend", "torch", "--phoneme-ids", "1,5,2", "--prompt",
            tmp_path / "voice.wav", "--out", tmp_path / "o.wav", "-q", needles=("voice.wav", needle))


@pytest.mark.parametrize("what", ["missing", "folder"])
def test_prompt_that_is_not_a_file(tmp_path, demo_checkpoint, what):
    prompt = tmp_path / "voice.wav"
    if what == "folder":
        prompt.mkdir()
    needle = "file not found" if what == "missing" else "is a folder"
    refused([tmp_path], "synthesize", demo_checkpoint(), "--backend", "torch", "--phoneme-ids", "1,5,2", "--prompt",
            prompt, "--out", tmp_path / "o.wav", "-q", needles=("voice.wav", needle))


def _sparse_wav(path, seconds, rate=384_000, channels=2, bits=32, fmt=3):
    """A WAV claiming `seconds` of audio without using the disk (sparse file)."""
    nbytes = int(seconds * rate) * channels * bits // 8
    header = _wav_bytes(rate=rate, channels=channels, bits=bits, fmt=fmt, frames=0, data_size=min(nbytes, 2**32 - 1))
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + nbytes)
    return path


def test_long_wav_refused_from_its_header(tmp_path):
    path = _sparse_wav(tmp_path / "long.wav", seconds=1400)  # 4 GiB of float32 stereo at 384 kHz
    tracemalloc.start()
    with pytest.raises(BadInput, match="long.wav.*longer than 600 s"):
        wav.read_wav(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20, f"refusing took {peak} bytes"


def test_prompt_is_trimmed_before_resampling(tmp_path):
    """Only the first seconds of a long 384 kHz WAV are read and resampled (peak memory stays small)."""
    path = _sparse_wav(tmp_path / "long.wav", seconds=1400)
    tracemalloc.start()
    audio = wav.load_audio(path, 24000, max_seconds=4.0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(audio) == 4 * 24000
    assert peak < 200 << 20, f"trimmed read peaked at {peak / 2**20:.0f} MiB"


def test_trimmed_prompt_gives_the_same_codes(tmp_path):
    """Trimming before resampling does not change the prompt codes (the encoder is causal)."""
    from runtimes.codec import PROMPT_CONTEXT_SECONDS, fit_frames
    from reference_model.codec import encode, random_codec

    rng = np.random.default_rng(0)
    x = (0.2 * rng.standard_normal(44100 * 6)).astype(np.float32)
    wav.write_wav(tmp_path / "v.wav", x, 44100, float32=True)
    model = random_codec(0)
    whole = fit_frames(encode(model, wav.load_audio(tmp_path / "v.wav", 24000)).T, 225)
    trimmed = wav.load_audio(tmp_path / "v.wav", 24000, max_seconds=3.0 + PROMPT_CONTEXT_SECONDS)
    assert np.array_equal(fit_frames(encode(model, trimmed).T, 225), whole)
