"""Speech to text (the original's `--task stt`): audio codes -> phoneme ids -> IPA, greedy, on any backend.

The pass is `audio <sep> lang <sep> rvq(0) <sep> phn` (valle_export.sequence.stt_pass), causal, starting from
<bos> and stopping at </eos>. The original at 73833ee returns the unprojected hidden state for this pass (its
classifier name `phn` matches no head since commit 2ea387c), so its greedy stt takes an argmax over d_model
hidden dims; here head 9 (`stt`, one row per phoneme id) is applied as designed (README, "Tasks").
"""
from __future__ import annotations

import numpy as np

from valle_export import names, sequence as seq

from .backend import Backend


def transcribe_ids(backend: Backend, audio: np.ndarray, lang: int, max_tokens: int) -> np.ndarray:
    """Greedy phoneme ids (bos and eos removed) of audio codes [frames, levels]; at most `max_tokens`."""
    layout = backend.layout
    phn = [layout.bos_token]
    spec = seq.stt_pass(layout, audio, lang, phn)
    logits = backend.prefill(spec)
    while len(phn) - 1 < max_tokens:
        token = int(np.argmax(logits))
        if token == layout.eos_token:
            break
        phn.append(token)
        spec = seq.extend(layout, spec, names.TABLE_TEXT, [token])
        logits = backend.extend(spec)
    return np.array(phn[1:], dtype=np.int64)


def decode_ids(tokenizer_json: str, ids: np.ndarray) -> str:
    """IPA text of phoneme ids through the model's tokenizer, spaces cleaned as the original does
    (vall_e/inference.py:444). Several vocabulary strings share an id; `tokenizers` picks one of them."""
    from tokenizers import Tokenizer

    text = Tokenizer.from_str(tokenizer_json).decode([int(i) for i in ids], skip_special_tokens=False)
    return text.replace("   ", "_").replace(" ", "").replace("_", " ")


def audio_codes(codec, path, max_seconds: float) -> np.ndarray:
    """A WAV as codes [frames, levels]: the whole clip (up to `max_seconds`), as the original's stt (no trimming
    to a prompt length)."""
    from valle_export import wav

    return codec.encode(wav.load_audio(path, codec.sample_rate, max_seconds=max_seconds)).T
