"""The one source of truth for what a GGUF backend computes: exact, approximate (why, and the measured bound)
or refused (why, and the alternatives), per pass kind.

Every consumer asks here: the GGUF writer stores the verdict in `valle.exactness` and the `gguf` command
prints it; the llama.cpp and ggml backends label themselves with it (recomputed from the file's own facts:
arch, activation, positions, masks, the stored tensor types, and the KV cache type they run with);
`check-fixture` holds a backend to it and the synthesis summary reports it. A verdict is decided by
everything that changes the numbers, so a quantized or f16 file, or an f16 KV cache, is never "exact".
Imports: contracts, names, stdlib.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Iterable, Mapping

from . import contracts, names

EXACT, APPROXIMATE, REFUSED = "exact", "approximate", "refused"
PASS_AR, PASS_LEN, PASS_NAR, PASS_NAR_LEN = "ar", "len", "nar", "nar_len"
PASS_KINDS = (PASS_AR, PASS_LEN, PASS_NAR, PASS_NAR_LEN)

# Stored weight types that reproduce the reference's float32 arithmetic (norms are always F32).
FULL_PRECISION_TYPES = frozenset({"F32"})

# Measured bounds (max |got - reference| / max |reference| over logits; design.md 3), named in contracts.
GELU_BOUND = contracts.GELU_TANH_REL
F16_KV_BOUND = contracts.F16_KV_REL

MROPE_ARCH = "qwen2vl"  # positions as M-RoPE components: no relabelling needed
GELU_REASON = "stock llama.cpp has no erf GELU (gemma's tanh GELU, fp16 table on CPU)"
ALTERNATIVES = "use the ONNX backend, or the ggml backend on this same file (--backend ggml)"


def pass_kind(head: str) -> str:
    """The pass kind a head belongs to (the unit every verdict is given for)."""
    if head in (names.HEAD_AR, names.HEAD_STT):  # stt: a causal level-0 pass like the AR's
        return PASS_AR
    if head == names.HEAD_LEN:
        return PASS_LEN
    if head == names.HEAD_NAR_LEN:
        return PASS_NAR_LEN
    return PASS_NAR


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What a backend computes for one pass kind. `bound` is the measured relative-error bound of an
    approximate verdict where one is known (None: quantization, judged by token agreement instead)."""

    status: str
    reason: str = ""
    bound: float | None = None

    def __post_init__(self) -> None:
        if self.status not in (EXACT, APPROXIMATE, REFUSED):
            raise ValueError(f"unknown exactness status {self.status!r}")
        if (self.status == EXACT) != (not self.reason):
            raise ValueError("an exact verdict has no reason; every other verdict has one")

    @property
    def exact(self) -> bool:
        return self.status == EXACT

    @property
    def refused(self) -> bool:
        return self.status == REFUSED

    def text(self) -> str:
        """One line for reports: `exact`, `approximate: <reason>` or `refused: <reason>`."""
        return self.status if self.exact else f"{self.status}: {self.reason}"

    def to_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "bound": self.bound}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Verdict":
        return cls(str(data["status"]), str(data.get("reason", "")), data.get("bound"))


Verdicts = dict[str, Verdict]


def combine(*parts: Verdict) -> Verdict:
    """Worst status wins (refused > approximate > exact); reasons are joined, bounds add up."""
    refused = [p for p in parts if p.refused]
    if refused:
        return refused[0]
    approx = [p for p in parts if p.status == APPROXIMATE]
    if not approx:
        return Verdict(EXACT)
    bounds = [p.bound for p in approx]
    bound = None if any(b is None for b in bounds) else sum(bounds)
    return Verdict(APPROXIMATE, "; ".join(p.reason for p in approx), bound)


def weight_verdict(weight_types: Iterable[str]) -> Verdict:
    """Approximate unless every stored tensor is full precision (quantized and f16 files never are exact)."""
    lossy = sorted(set(weight_types) - FULL_PRECISION_TYPES)
    if not lossy:
        return Verdict(EXACT)
    return Verdict(APPROXIMATE, f"weights stored as {', '.join(lossy)}")


def kv_verdict(kv_type: str) -> Verdict:
    if kv_type == "f32":
        return Verdict(EXACT)
    return Verdict(APPROXIMATE, f"{kv_type} KV cache", F16_KV_BOUND)


def llamacpp_verdicts(arch: str, hidden_act: str, position_mode: str, noncausal: bool,
                      weight_types: Iterable[str], kv_type: str = "f32", state_problem: str = "") -> Verdicts:
    """Stock llama.cpp on a valle-export GGUF, per pass kind.

    Every pass of every model runs: GELU models approximately (tanh GELU), restarting positions on non-M-RoPE
    arches through relabelling (design.md 3b). `state_problem` is the backend's self-test result: when
    llama.cpp's saved-state format is not the expected one, causal passes with restarting positions are refused.
    """
    weights, kv = weight_verdict(weight_types), kv_verdict(kv_type)
    model = Verdict(APPROXIMATE, GELU_REASON, GELU_BOUND) if hidden_act == "gelu" else Verdict(EXACT)
    verdicts = {k: model for k in PASS_KINDS}
    if state_problem and arch != MROPE_ARCH and position_mode == names.POSITIONS_SEGMENTED:
        refused = Verdict(REFUSED, f"{state_problem}; {ALTERNATIVES}")
        verdicts.update({k: refused for k in (PASS_KINDS if not noncausal else (PASS_AR, PASS_LEN))})
    return {k: combine(v, weights, kv) for k, v in verdicts.items()}


def ggml_verdicts(weight_types: Iterable[str], kv_type: str = "f32") -> Verdicts:
    """valle-export's own ggml graph (erf GELU, explicit positions and masks): only storage can approximate."""
    v = combine(weight_verdict(weight_types), kv_verdict(kv_type))
    return {k: v for k in PASS_KINDS}


def all_exact(verdicts: Verdicts) -> bool:
    return all(v.exact for v in verdicts.values())


def approximation(verdicts: Verdicts) -> str:
    """Why a backend is not exact ('' when it is): the distinct reasons of its non-exact verdicts."""
    return "; ".join(sorted({v.reason for v in verdicts.values() if not v.exact}))


def refused_kinds(verdicts: Verdicts) -> set[str]:
    return {k for k, v in verdicts.items() if v.refused}


def to_json(verdicts: Verdicts) -> str:
    return json.dumps({k: v.to_dict() for k, v in verdicts.items()}, sort_keys=True)


def from_json(text: str) -> Verdicts:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("exactness is not an object")
    return {k: Verdict.from_dict(v) if isinstance(v, dict) else _legacy(str(v)) for k, v in data.items()}


def _legacy(text: str) -> Verdict:
    """Files written before verdicts were typed stored `exact` / `approximate: ...` / `refused: ...`."""
    status, _, reason = text.partition(": ")
    return Verdict(status, reason)


def report_lines(verdicts: Verdicts) -> list[str]:
    return [f"{kind} passes: {verdicts[kind].text()}" for kind in PASS_KINDS if kind in verdicts]
