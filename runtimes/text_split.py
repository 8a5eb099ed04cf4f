"""Long text -> pieces synthesized one by one (the original's `--split-text-by`, vall_e/data.py sentence_split).

`sentences` splits after . ! ? … and their CJK forms when whitespace or the end follows (the original uses
nltk's punkt model, which needs a data download; this rule agrees with it on ordinary prose but not on
abbreviations such as "Dr."), `lines` on newlines, `none` keeps the text whole, anything else is a literal
delimiter. Empty pieces are dropped.
"""
from __future__ import annotations

import re

SPLIT_MODES = ("sentences", "lines", "none")
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])[\"'”’)\]]*\s+|(?<=[。！？])")


def split_text(text: str, split_by: str = "sentences") -> list[str]:
    """Pieces of `text`, stripped, none empty (a blank text gives [])."""
    if split_by == "none":
        pieces = [text]
    elif split_by == "sentences":
        pieces = _split_sentences(text)
    elif split_by == "lines":
        pieces = text.splitlines()
    else:
        pieces = text.split(split_by)
    return [p.strip() for p in pieces if p.strip()]


def _split_sentences(text: str) -> list[str]:
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        end = m.end()
        closing = len(m.group(0).rstrip()) if m.group(0).strip() else 0
        out.append(text[start:m.start() + closing])
        start = end
    out.append(text[start:])
    return out
