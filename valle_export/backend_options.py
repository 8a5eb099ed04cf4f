"""What a user may tune when opening any backend, with one meaning and one default on every backend, and the
choice lists the CLI offers (defined here once, so the CLI need not import the modules that own them).
Imports: stdlib.
"""
from __future__ import annotations

import dataclasses

RUNTIME_BACKENDS = ("onnx", "llamacpp", "ggml")  # torch-free; `torch` (the reference) is added by the CLI
KV_TYPES = ("f32", "f16")
ONNX_PROVIDERS = ("auto", "cpu", "cuda")
# q8_0 / q4_0: weight-only blocks of 32 (MatMulNBits), batch-invariant; int8: dynamic (activations per call)
ONNX_VARIANTS = ("fp32", "fp16", "int8", "q8_0", "q4_0")
WEIGHT_ONLY_VARIANTS = ("q8_0", "q4_0")
# the one precision vocabulary (as gguf --outtype): ONNX export word -> (graph dtype, quantization)
ONNX_OUTTYPES = {"f32": ("fp32", None), "f16": ("fp16", None), "int8": ("fp32", "int8"), "q8_0": ("fp32", "q8_0"),
                 "q4_0": ("fp32", "q4_0")}
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
