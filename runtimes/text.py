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


AUTO = "auto"


def language_id(lang: str) -> int:
    """The language token, as the original's `encode_lang`: its id for en/ja/de/fr/zh/ko (a region suffix
    such as en-us counts as its language), 0 for anything else, `auto` included."""
    return LANGUAGES.get(lang.lower().split("-")[0], 0)


def espeak_language(lang: str) -> str:
    """The original's coercion: en -> en-us, fr -> fr-fr, zh -> cmn-latn-pinyin; others as given."""
    code = lang.lower()
    if code == "en":
        return "en-us"
    if code == "fr":
        return "fr-fr"
    if code.startswith("zh"):
        return "cmn-latn-pinyin"
    return code


def detect_language(text: str) -> str:
    """The original's per-piece detection (langdetect, seeded here so a run repeats); `en` for no text."""
    if not text.strip():
        return "en"
    try:
        from langdetect import DetectorFactory, LangDetectException, detect
    except ImportError:
        raise BadInput("--text-language auto needs the langdetect package (pip install langdetect)") from None
    DetectorFactory.seed = 0
    try:
        return detect(text)
    except LangDetectException:
        return "en"


def to_hiragana(text: str) -> str:
    """Japanese kanji and katakana to hiragana before espeak-ng, as the original (pykakasi)."""
    try:
        import pykakasi
    except ImportError:
        raise BadInput("Japanese text needs the pykakasi package (pip install pykakasi); or pass --phonemes") from None
    return "".join(part["hira"] for part in pykakasi.kakasi().convert(text))


def check_espeak_language(lang: str) -> None:
    """Refuse a text language espeak-ng does not have before any model is loaded (`auto` is checked per piece)."""
    if lang == AUTO:
        return
    try:
        from phonemizer.backend import EspeakBackend
    except ImportError:
        return  # phonemize() reports the missing package
    if EspeakBackend.is_available() and espeak_language(lang) not in EspeakBackend.supported_languages():
        raise BadInput(f"espeak-ng does not know text language {lang!r} (see `espeak-ng --voices`)")


ZH_TONES = {"1": "ˇ", "2": "ˉ", "3": "ˊ", "4": "ˋ", "5": "_"}


def phonemize(text: str, lang: str = "en") -> str:
    """IPA with stress and punctuation, stripped (the original's g2p.encode options)."""
    try:
        from phonemizer.backend import EspeakBackend
    except ImportError:
        raise BadInput("text input needs the phonemizer package and espeak-ng; or pass --phonemes / "
                       "--phoneme-ids") from None
    language = espeak_language(lang)
    if language.startswith("ja"):
        text = to_hiragana(text)
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
