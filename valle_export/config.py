"""`ValleConfig`: the native VALL-E model config, parsed once from checkpoint metadata.

The original stores its config as JSON (`__metadata__["config"]` of `fp32.sft`, or `"config"` in a
`.pth` dict). Only the fields that change the math are kept here; every missing flag gets the original's
default in `_fill_defaults`, which logs each one, and every variant this tool cannot reproduce exactly is
refused by name (`UnsupportedModel`). Imports: names, errors, stdlib.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from . import names
from .errors import BadCheckpoint, UnsupportedModel

log = logging.getLogger(__name__)

# Original defaults for flags a config may leave out (vall_e/config.py of the original, ModelExperimental).
_EXPERIMENTAL_DEFAULTS: dict[str, Any] = {
    "split_classifiers": False,
    "audio_embedding_sums": False,
    "audio_embedding_mode": None,
    "unified_position_ids": True,
    "noncausal_masks": False,
    "classifiers_bias": True,
    "max_position_embeddings": 75 * 60 * 5,
    "causal_size": 1,
    "interleave": False,
    "tie_classifier_to_embedding": False,
    "kv_heads": 0,
    "hidden_act": "gelu",  # valle-export extension: the original always uses erf GELU
}
_SIZE_KEYS = ("dim", "heads", "layers")
MAX_SIZE = 1 << 24  # no real size comes near; larger ones are corrupt and would size huge arrays
SUPPORTED_ACTIVATIONS = ("gelu", "silu")


@dataclasses.dataclass(frozen=True)
class ValleConfig:
    """What a VALL-E model computes, independent of any runtime. Sizes in tokens / features."""

    version: int
    name: str
    capabilities: tuple[str, ...]
    d_model: int
    n_heads: int
    n_layers: int
    d_ffn: int
    resp_levels: int
    audio_tokens: int
    phoneme_tokens: int
    langs: int
    tasks: int
    tones: int
    unified_position_ids: bool
    noncausal_masks: bool
    classifiers_bias: bool
    max_position_embeddings: int
    hidden_act: str = "gelu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    raw: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def has_len(self) -> bool:
        return "len" in self.capabilities

    @property
    def position_mode(self) -> str:
        return names.POSITIONS_UNIFIED if self.unified_position_ids else names.POSITIONS_SEGMENTED

    def to_json(self) -> str:
        """The source config as the original wrote it (round-trips through `parse_config`)."""
        return json.dumps(self.raw, sort_keys=True)


def _fill_defaults(experimental: dict, source: str) -> dict:
    filled = dict(experimental)
    for key, value in _EXPERIMENTAL_DEFAULTS.items():
        if key not in filled:
            log.info("%s: config has no experimental.%s, using the original's default %r", source, key, value)
            filled[key] = value
    return filled


def _refuse_unsupported(raw: dict, exp: dict, source: str) -> None:
    version = raw.get("version", 5)
    if type(version) is not int:
        raise BadCheckpoint(f"config version {version!r} is not an integer", source)
    if version >= 7:
        raise UnsupportedModel(f"VALL-E v2 models (config version {version} >= 7) are not supported", source)
    checks = [
        (raw.get("arch_type", "llama") != "llama", f"arch_type {raw.get('arch_type')!r} (only 'llama')"),
        (raw.get("experts", 1) not in (0, 1), f"mixture of experts (experts={raw.get('experts')})"),
        (not exp["split_classifiers"], "experimental.split_classifiers=false (the single 17702-row classifier)"),
        (exp["audio_embedding_sums"] is not True, f"experimental.audio_embedding_sums={exp['audio_embedding_sums']!r}"),
        (exp["audio_embedding_mode"] not in (None, "", False),
         f"experimental.audio_embedding_mode={exp['audio_embedding_mode']!r}"),
        (exp["interleave"], "experimental.interleave=true"),
        (exp["tie_classifier_to_embedding"], "experimental.tie_classifier_to_embedding=true"),
        (exp["causal_size"] != 1, f"experimental.causal_size={exp['causal_size']}"),
        (exp["hidden_act"] not in SUPPORTED_ACTIVATIONS, f"hidden_act {exp['hidden_act']!r}"),
    ]
    for bad, what in checks:
        if bad:
            raise UnsupportedModel(f"unsupported model variant: {what}", source)


def _load_json(raw: str | bytes, source: str) -> Any:
    """JSON text -> object; every way it can fail is one `BadCheckpoint` naming `source`."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise BadCheckpoint(f"config is not valid JSON ({err.msg} at char {err.pos})", source) from None
    except (ValueError, RecursionError):
        raise BadCheckpoint("config is not valid JSON (not UTF-8 text, or nested too deeply)", source) from None


def _size(value: Any, key: str, source: str, minimum: int = 1) -> int:
    """An integer size within [minimum, MAX_SIZE]: a float, a string or a bool is a corrupt config (int()
    would silently accept 3.7 or "64"), and a huge size would make later steps allocate without bound."""
    if type(value) is not int:
        raise BadCheckpoint(f"config {key} is {value!r}, not an integer", source)
    if not minimum <= value <= MAX_SIZE:
        raise BadCheckpoint(f"config {key} is {value}, outside {minimum}..{MAX_SIZE}", source)
    return value


def _sizes(raw: dict, size: dict, exp: dict, source: str) -> dict[str, int]:
    """Every integer field of `ValleConfig`, checked (`_size`); dim must divide into heads."""
    got = {
        "d_model": _size(size["dim"], "size.dim", source),
        "n_heads": _size(size["heads"], "size.heads", source),
        "n_layers": _size(size["layers"], "size.layers", source),
        "resp_levels": _size(size.get("resp_levels", 8), "size.resp_levels", source),
        "audio_tokens": _size(size.get("audio_tokens", 1024), "size.audio_tokens", source),
        "phoneme_tokens": _size(size.get("phoneme_tokens", 256), "size.phoneme_tokens", source),
        "langs": _size(raw.get("langs", 1), "langs", source, 0),
        "tasks": _size(raw.get("tasks", 8), "tasks", source, 0),
        "tones": _size(raw.get("tones", 1), "tones", source, 0),
        "max_position_embeddings": _size(exp["max_position_embeddings"], "experimental.max_position_embeddings",
                                         source),
    }
    got["d_ffn"] = _size(size.get("ffn", 4 * got["d_model"]), "size.ffn", source)
    if got["d_model"] % got["n_heads"]:
        raise BadCheckpoint(f"size.dim {got['d_model']} is not divisible by size.heads {got['n_heads']}", source)
    return got


def _capabilities(raw: dict, source: str) -> tuple[str, ...]:
    caps = raw.get("capabilities", ["ar", "nar"])
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise BadCheckpoint(f"config capabilities {caps!r} is not a list of names", source)
    return tuple(caps)


def parse_config(raw: Any, source: str = "config") -> ValleConfig:
    """Parse the original's config dict (or its JSON string); `source` names the file in errors."""
    if isinstance(raw, (str, bytes)):
        raw = _load_json(raw, source)
    if not isinstance(raw, dict):
        raise BadCheckpoint("config is not a JSON object", source)
    size = raw.get("size")
    if not isinstance(size, dict):
        raise BadCheckpoint("config has no 'size' object", source)
    missing = [f"size.{k}" for k in _SIZE_KEYS if k not in size]
    if missing:
        raise BadCheckpoint(f"config is missing {', '.join(missing)}", source)
    experimental = raw.get("experimental")
    if experimental is not None and not isinstance(experimental, dict):
        raise BadCheckpoint(f"config experimental is {type(experimental).__name__}, not an object", source)
    exp = _fill_defaults(experimental or {}, source)
    _refuse_unsupported(raw, exp, source)
    return ValleConfig(
        version=raw.get("version", 5),
        name=str(raw.get("name", "")),
        capabilities=_capabilities(raw, source),
        **_sizes(raw, size, exp, source),
        unified_position_ids=bool(exp["unified_position_ids"]),
        noncausal_masks=bool(exp["noncausal_masks"]),
        classifiers_bias=bool(exp["classifiers_bias"]),
        hidden_act=str(exp["hidden_act"]),
        raw=raw,
    )
