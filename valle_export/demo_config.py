"""The demo models' native config, torch-free: what the original would write for a seeded random model of the
tiny test shape or the released shape. The reference side draws the weights (`reference_model.demo`); core
tests build layouts and sequences from this config without importing torch. Imports: names, stdlib.
"""
from __future__ import annotations

import dataclasses

from . import names


@dataclasses.dataclass(frozen=True)
class DemoSpec:
    size: str = "tiny"  # tiny (d64, 4 heads, 2 layers) or full (the released d1024, 16 heads, 12 layers)
    seed: int = 0
    hidden_act: str = "gelu"
    positions: str = names.POSITIONS_SEGMENTED
    noncausal_masks: bool = True
    capabilities: tuple[str, ...] = ("ar", "nar", "len")


SIZES = {"tiny": (64, 4, 2), "full": (1024, 16, 12)}


def demo_config(spec: DemoSpec) -> dict:
    """The native config JSON the original would write for this model."""
    dim, heads, layers = SIZES[spec.size]
    return {
        "name": names.DEMO_NAME_PREFIX + spec.size, "version": 5,
        "size": {"dim": dim, "heads": heads, "layers": layers, "resp_levels": 8, "audio_tokens": 1024,
                 "phoneme_tokens": 256},
        "tasks": 9, "langs": 6, "tones": 1, "experts": 1, "arch_type": "llama", "attention": "auto",
        "capabilities": list(spec.capabilities),
        "experimental": {
            "split_classifiers": True, "audio_embedding_sums": True, "audio_embedding_mode": None,
            "unified_position_ids": spec.positions == names.POSITIONS_UNIFIED,
            "noncausal_masks": spec.noncausal_masks, "classifiers_bias": True, "causal_size": 1,
            "max_position_embeddings": 22750, "interleave": False, "tie_classifier_to_embedding": False,
            "hidden_act": spec.hidden_act,
        },
    }


