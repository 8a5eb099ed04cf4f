"""What a user may tune when opening any backend, with one meaning and one default on every backend, and the
choice lists the CLI offers (defined here once, so the CLI need not import the modules that own them).
Imports: stdlib, errors.
"""
from __future__ import annotations

import dataclasses

from .errors import BadInput

RUNTIME_BACKENDS = ("onnx", "llamacpp", "ggml")  # torch-free; `torch` (the reference) is added by the CLI
KV_TYPES = ("f32", "f16")
ONNX_PROVIDERS = ("auto", "cpu", "cuda")
# q8_0 / q4_0 / q4_128: weight-only blocks of 32 / 32 / 128 (MatMulNBits: bits, block), batch-invariant;
# w8a8: int8 weights per column and activations per row (integer GEMMs, the fast NAR), batch-invariant;
# int8: dynamic (one activation scale per call)
WEIGHT_ONLY_VARIANTS = {"q8_0": (8, 32), "q4_0": (4, 32), "q4_128": (4, 128)}
ONNX_VARIANTS = ("fp32", "fp16", "int8", *WEIGHT_ONLY_VARIANTS, "w8a8")
# A folder may pair an AR step variant with a backbone variant: "STEP+BACKBONE" runs the cached AR steps on
# ar_step.STEP.onnx and every other pass (AR prefill, NAR, NAR-len) on backbone.BACKBONE.onnx. AR steps read
# every weight once per token (memory-bound: fewest bytes win), NAR passes multiply 800+ positions at once
# (compute-bound: integer GEMMs win). `fast` names the pair measured fastest on two cores (README, issue 22).
FAST_PRESET = "fast"
FAST_PAIR = ("q4_128", "w8a8")
PAIRED_VARIANTS = (FAST_PRESET,)
# the one precision vocabulary (as gguf --outtype): ONNX export word -> (graph dtype, quantization)
ONNX_OUTTYPES = {"f32": ("fp32", None), "f16": ("fp16", None), "int8": ("fp32", "int8"), "q8_0": ("fp32", "q8_0"),
                 "q4_0": ("fp32", "q4_0"), "q4_128": ("fp32", "q4_128"), "w8a8": ("fp32", "w8a8"),
                 FAST_PRESET: ("fp32", FAST_PRESET)}


def split_variant(variant: str) -> tuple[str, str]:
    """(AR step variant, backbone variant) of a variant word: `fast`, `STEP+BACKBONE`, or one variant for
    both. The one check of the word (CLI parse time, API callers, the ONNX backend): raises BadInput naming the
    unknown part."""
    step, _, backbone = (("+".join(FAST_PAIR) if variant == FAST_PRESET else variant)).partition("+")
    backbone = backbone or step
    for part in (step, backbone):
        if part not in ONNX_VARIANTS:
            raise BadInput(f"ONNX variant {part!r} is not one of {', '.join(ONNX_VARIANTS)} (or {FAST_PRESET}, "
                             "or STEP+BACKBONE)")
    if "fp16" in (step, backbone) and step != backbone:
        raise BadInput("fp16 graphs have no AR step graph: pair other variants")
    return step, backbone
DEFAULT_N_CTX = 4096  # positions one pass may hold: 12 s of audio with a long prompt and text fits in 2k


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    threads: int = 0  # 0 = the library's default (every core)
    n_ctx: int = DEFAULT_N_CTX  # llama.cpp / ggml context (onnxruntime has no fixed context)
    kv_type: str = "f32"  # llama.cpp KV cache type (f32 keeps SiLU files exact; f16 is approximate)
    provider: str = "auto"  # onnxruntime execution provider (auto = CUDA when present)
    variant: str = "fp32"  # ONNX backbone variant
    extra_bufts: str | None = None  # llama.cpp AMX / repack weight buffers: auto / on / off (runtimes.host_cpu)
    lora: str | None = None  # llama.cpp only: a LoRA adapter GGUF applied at run time (valle-export gguf-lora)

    def __post_init__(self) -> None:
        if self.threads < 0 or self.n_ctx < 1:
            raise ValueError(f"threads must be >= 0 and n_ctx >= 1 (got {self.threads}, {self.n_ctx})")
        if self.kv_type not in KV_TYPES:
            raise ValueError(f"kv_type {self.kv_type!r} is not one of {', '.join(KV_TYPES)}")
