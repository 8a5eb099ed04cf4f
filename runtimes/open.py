"""Open any torch-free backend for an exported model, in one place: the CLI, the synthesis runtime and the
benchmark all come here, so the same options mean the same thing everywhere (`BackendOptions`)."""
from __future__ import annotations

from pathlib import Path

from valle_export import graphs
from valle_export.backend_options import RUNTIME_BACKENDS, BackendOptions
from valle_export.errors import BadInput


HYBRID = "hybrid"  # a folder with an AR GGUF (on ggml) and an ONNX export (NAR on onnxruntime)
AR_GGUF_GLOB = "ar.*gguf"  # ar.gguf or ar.<type>.gguf: named for its role, so a GGUF merely kept beside an
# ONNX export (model.f32.gguf) does not change what `auto` opens


def detect_kind(model: Path) -> str:
    """`llamacpp` for a .gguf file, `hybrid` for a folder holding a backbone graph and an `ar.<type>.gguf` (AR on
    ggml, NAR on onnxruntime: runtimes.hybrid_backend), else `onnx` for a folder with a backbone graph."""
    model = Path(model)
    if model.suffix == ".gguf":
        return "llamacpp"
    if model.is_dir() and any(model.glob("backbone*.onnx")):
        return HYBRID if any(model.glob(AR_GGUF_GLOB)) else "onnx"
    raise BadInput(f"not an exported model (a folder with {graphs.BACKBONE_FILE}, or a .gguf file)", model)


def open_backend(model: Path, kind: str = "auto", options: BackendOptions = BackendOptions()):
    """An ONNX folder or a GGUF file on onnxruntime, llama.cpp or ggml (`auto`: by what `model` is)."""
    model = Path(model)
    kind = detect_kind(model) if kind == "auto" else kind
    if options.lora is not None and kind != "llamacpp":
        raise BadInput(f"--lora applies an adapter GGUF on the llama.cpp backend only, not {kind}; for other "
                       "backends merge the adapter at export (valle-export onnx/gguf --lora lora.sft)", options.lora)
    if kind == "onnx":
        from .onnx_backend import OnnxBackend, SessionConfig

        return OnnxBackend(model, SessionConfig(provider=options.provider, threads=options.threads,
                                                variant=options.variant))
    if kind == "llamacpp":
        from .llama_backend import LlamaConfig, LlamaCppBackend

        return LlamaCppBackend(model, LlamaConfig(n_ctx=options.n_ctx, threads=options.threads,
                                                  kv_type=options.kv_type, extra_bufts=options.extra_bufts,
                                                  lora=None if options.lora is None else Path(options.lora)))
    if kind == "ggml":
        from .ggml_backend import GgmlBackend

        return GgmlBackend(model, options.threads, options.n_ctx, options.kv_type)
    if kind == HYBRID:
        from .hybrid_backend import HybridBackend

        ar = open_backend(folder_gguf(model), "ggml", options)
        try:
            return HybridBackend(ar, open_backend(model, "onnx", options))
        except BaseException:
            ar.close()
            raise
    raise BadInput(f"unknown backend {kind!r} (one of auto, {', '.join(RUNTIME_BACKENDS)})")


def folder_gguf(folder: Path) -> Path:
    """The one AR GGUF of a hybrid folder (which file runs the AR must not depend on directory order)."""
    found = sorted(Path(folder).glob(AR_GGUF_GLOB))
    if len(found) != 1:
        raise BadInput(f"a hybrid model folder holds exactly one ar.<type>.gguf (found {len(found)}: "
                       f"{', '.join(p.name for p in found)})", folder)
    return found[0]
