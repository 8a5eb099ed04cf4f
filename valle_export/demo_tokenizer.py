"""The demo models' phoneme tokenizer: one id per IPA symbol, in the `tokenizers` JSON format.

It lives in the core because both the reference side (demo checkpoints carry it) and the runtime side (tests,
demo synthesis) need it, and neither may import the other. Imports: stdlib.
"""
from __future__ import annotations

import json

# The demo models' tokenizer: one id per IPA symbol (the released model's is a BPE over IPA; ids differ).
DEMO_SYMBOLS = (" !',-.:;?abcdefhijklmnopqrstuvwxyzæçðøħŋœɐɑɒɓɔɕɖɗɘəɚɛɜɝɞɟɠɡɢɣɤɥɦɧɨɪɫɬɭɮɯɰɱɲɳɴɵɶɸɹɺɻɽɾ"
                "ʀʁʂʃʄʈʉʊʋʌʍʎʏʐʑʒʔʕʘʙʛʜʝʟʡʢʲˈˌːˑ̩̃θχᵻ")


def demo_tokenizer_json() -> str:
    """A character-level tokenizer over IPA in the `tokenizers` JSON format, with <bos>/</eos> framing."""
    vocab = {"<unk>": 0, "<bos>": 1, "</eos>": 2}
    for ch in DEMO_SYMBOLS:
        vocab.setdefault(ch, len(vocab))
    assert len(vocab) <= 256
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": None, "pre_tokenizer": {"type": "Split", "pattern": {"String": ""}, "behavior": "Isolated",
                                              "invert": False},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}},
                                      {"SpecialToken": {"id": "</eos>", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<bos>": {"id": "<bos>", "ids": [1], "tokens": ["<bos>"]},
                                              "</eos>": {"id": "</eos>", "ids": [2], "tokens": ["</eos>"]}}},
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }, ensure_ascii=False)
