"""Text front end: IPA phonemes through espeak-ng (phonemizer) with the original's options, then the
model's own phoneme tokenizer (`tokenizer.json`, read with the `tokenizers` library).

For users without espeak-ng: `--phonemes` (IPA text, tokenized here) or raw phoneme ids.
"""
from __future__ import annotations


import numpy as np

from valle_export.errors import BadInput

# the original's language ids (vall_e/data.py get_lang_symmap)
LANGUAGES = {"en": 0, "ja": 1, "de": 2, "fr": 3, "zh": 4, "ko": 5}
BOS, EOS = 1, 2


def language_id(lang: str) -> int:
    """The original maps unknown languages to 0 (en); we refuse them instead of guessing."""
    code = lang.lower().split("-")[0]
    if code not in LANGUAGES:
        raise BadInput(f"unknown language {lang!r} (the model knows: {', '.join(LANGUAGES)})")
    return LANGUAGES[code]


def espeak_language(lang: str) -> str:
    """The original's coercion: en -> en-us, fr -> fr-fr, zh -> cmn-latn-pinyin."""
    code = lang.lower()
    if code == "en":
        return "en-us"
    if code == "fr":
        return "fr-fr"
    if code.startswith("zh"):
        return "cmn-latn-pinyin"
    if code.startswith("ja"):
        raise BadInput("Japanese needs kanji-to-hiragana conversion (pykakasi); pass --phonemes instead")
    return code


ZH_TONES = {"1": "ˇ", "2": "ˉ", "3": "ˊ", "4": "ˋ", "5": "_"}


def phonemize(text: str, lang: str = "en") -> str:
    """IPA with stress and punctuation, stripped (the original's g2p.encode options)."""
    try:
        from phonemizer.backend import EspeakBackend
    except ImportError:
        raise BadInput("text input needs the phonemizer package and espeak-ng; or pass --phonemes / "
                       "--phoneme-ids") from None
    language_id(lang)
    language = espeak_language(lang)
    if not EspeakBackend.is_available():
        raise BadInput("text input needs espeak-ng, which is not installed; install it or pass --phonemes / "
                       "--phoneme-ids")
    try:
        backend = EspeakBackend(language, preserve_punctuation=True, with_stress=True)
    except RuntimeError as err:
        raise BadInput(f"espeak-ng cannot phonemize language {language!r} ({str(err).splitlines()[0]}); "
                       "pass --phonemes instead") from None
    phonemes = backend.phonemize([text], strip=True)
    if not phonemes or not phonemes[0]:
        raise BadInput(f"phonemizer returned nothing for {text!r}")
    out = phonemes[0]
    if language == "cmn-latn-pinyin":
        out = "".join(ZH_TONES.get(ch, ch) for ch in out)
    return out


class PhonemeTokenizer:
    """The model's `tokenizer.json`; ids are framed by <bos> (1) and </eos> (2) as the original's are."""

    def __init__(self, json_text: str, source: str = "tokenizer.json"):
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_str(json_text)
        except Exception as err:  # tokenizers raises plain Exceptions for malformed JSON
            raise BadInput(f"not a tokenizers JSON ({str(err).splitlines()[0][:120]})", source) from None
        self.source = source

    def encode(self, phonemes: str) -> np.ndarray:
        ids = list(self.tokenizer.encode(phonemes).ids)
        unk = self.tokenizer.token_to_id("<unk>")
        if unk is not None and unk in ids:
            raise BadInput(f"phonemes contain symbols the tokenizer does not know: {phonemes!r}", self.source)
        if not ids or ids[0] != BOS:
            ids = [BOS] + ids
        if ids[-1] != EOS:
            ids = ids + [EOS]
        return np.array(ids, dtype=np.int64)


def parse_ids(text: str, vocab: int) -> np.ndarray:
    try:
        ids = np.array([int(x) for x in text.replace(" ", "").split(",") if x], dtype=np.int64)
    except ValueError:
        raise BadInput(f"--phoneme-ids: not a comma-separated list of integers: {text!r}") from None
    if not len(ids) or ids.min() < 0 or ids.max() >= vocab:
        raise BadInput(f"--phoneme-ids must be 0..{vocab - 1}")
    return ids
