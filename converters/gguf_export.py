"""Write the uniform model as a GGUF that stock llama.cpp loads, then read it back and verify it.

Tensors: `converters.gguf_tensors` (built once, shared with the verifier). Metadata: the arch's own keys,
`tokenizer.ggml.model = "none"`, and `valle.*`
(layout, source config, tokenizer, head row start, head biases, input scale, Q/K layout, exactness), so the
file alone is enough for every runtime.

Types: 1-D tensors stay f32. f32/f16/bf16/q8_0/q4_0 are written by gguf-py; K-quants are made by
llama.cpp's own quantizer from an f32 file. In quantized files `token_embd` (input rows and head rows) is
kept f16: see README for the measurement behind that choice.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from valle_export import exactness, names, tensor_table as tt
from valle_export.errors import BadInput, ValleExportError
from valle_export.files import atomic_path
from valle_export.progress import Progress

from . import gguf_targets as targets
from .gguf_tensors import GgufSource, build_source, head_rows

GGUF_PY_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
K_QUANTS = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
            "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}
OUTTYPES = GGUF_PY_TYPES + tuple(K_QUANTS)


def _qtype(outtype: str):
    import gguf

    Q = gguf.GGMLQuantizationType
    return {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[outtype]


def _file_type(outtype: str):
    import gguf

    F = gguf.LlamaFileType
    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0,
            "q4_0": F.MOSTLY_Q4_0}[outtype]


def stored_weight_types(outtype: str) -> set[str]:
    """The weight types an outtype stores (before llama.cpp's per-tensor choices for K-quants), for the verdict
    written into the file; verification checks it against the types actually stored."""
    return {"F32"} if outtype == "f32" else {outtype.upper()}


def file_verdicts(model, arch: str, outtype: str) -> exactness.Verdicts:
    layout = model.layout
    return exactness.llamacpp_verdicts(arch, layout.hidden_act, layout.position_mode, layout.noncausal_masks,
                                       stored_weight_types(outtype))


def _metadata(writer, model, target: targets.Target, tokenizer: str | None, outtype: str,
              verdicts: exactness.Verdicts, source: GgufSource) -> None:
    cfg, layout = model.cfg, model.layout
    arch = target.arch
    writer.add_name(cfg.name or "vall-e")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.d_ffn)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.head_dim)
    if arch == targets.QWEN2VL:
        writer.add_rope_dimension_sections([0, cfg.head_dim // 2, 0, 0])
    writer.add_vocab_size(layout.vocab_size + head_rows(layout))
    writer.add_tokenizer_model("none")
    if outtype in GGUF_PY_TYPES:
        writer.add_file_type(_file_type(outtype))
    writer.add_string(names.GGUF_LAYOUT, layout.to_json())
    writer.add_string(names.GGUF_SOURCE_CONFIG, json.dumps(cfg.raw))
    if tokenizer is not None:
        writer.add_string(names.GGUF_TOKENIZER, tokenizer)
    writer.add_uint32(names.GGUF_HEAD_ROW_START, layout.vocab_size)
    writer.add_array(names.GGUF_HEAD_BIAS, [float(x) for x in source.head_bias])
    writer.add_float32(names.GGUF_INPUT_SCALE, target.input_scale)
    writer.add_string(names.GGUF_ROPE_LAYOUT, target.qk_layout)
    writer.add_string(names.GGUF_EXACTNESS, exactness.to_json(verdicts))
    if model.lora is not None:
        writer.add_string(names.GGUF_LORA, model.lora.to_json())


def _convert(name: str, data: np.ndarray, outtype: str) -> tuple[np.ndarray, object]:
    """(bytes or array, GGML type) of one tensor for a gguf-py outtype."""
    import gguf

    if data.ndim == 1 or outtype == "f32":
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if name == tt.GGUF_TOKEN_EMBD and outtype in ("q8_0", "q4_0"):
        outtype = "f16"  # input rows and head rows stay f16 in quantized files
    if outtype == "f16":
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    qtype = _qtype(outtype)
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block:
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16  # row not a whole number of blocks
    return gguf.quants.quantize(data, qtype), qtype


def write_gguf_py(model, path: Path, target: targets.Target, outtype: str, tokenizer: str | None,
                  progress: Progress, verdicts: exactness.Verdicts, source: GgufSource) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), target.arch)
    _metadata(writer, model, target, tokenizer, outtype, verdicts, source)
    tensors = source.tensors
    for k, (name, data) in enumerate(tensors.items()):
        converted, qtype = _convert(name, data, outtype)
        writer.add_tensor(name, converted, raw_dtype=qtype)
        progress.bar("tensors", k + 1, len(tensors))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize_with_llama_cpp(src: Path, dst: Path, outtype: str) -> None:
    """K-quants by llama.cpp's own quantizer, token_embd (input and head rows) kept f16."""
    try:
        import llama_cpp
    except ImportError:
        raise BadInput(f"--outtype {outtype} needs llama-cpp-python (pip install 'valle-export[llamacpp]')") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, K_QUANTS[outtype])
    params.token_embedding_type = llama_cpp.GGML_TYPE_F16
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise ValleExportError(f"llama.cpp's quantizer failed (code {rc})", dst)


def export_gguf(model, out: Path, outtype: str = "f16", arch: str | None = None, tokenizer: str | None = None,
                progress: Progress | None = None) -> dict:
    """Write `out` atomically; returns the verification report. Nothing appears unless it verifies."""
    from .gguf_verify import verify_gguf  # lazy: the verifier reads back through the runtime's reader

    progress = progress or Progress(quiet=True)
    if outtype not in OUTTYPES:
        raise BadInput(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    layout = model.layout
    try:
        arch = targets.choose_arch(layout.hidden_act, arch)
    except ValueError as err:
        raise BadInput(f"--arch: {err}") from None
    target = targets.make_target(arch, model.cfg.d_model)
    verdicts = file_verdicts(model, arch, outtype)  # K-quants: the f32 staging file already carries the final one
    source = build_source(model, target)
    scale = math.sqrt(model.cfg.d_model)
    if arch == targets.GEMMA and scale != 2 ** round(math.log2(scale)):
        progress.stage(f"note: sqrt(n_embd) = {scale:g} is not a power of two; the host rescaling rounds")
    with atomic_path(out) as tmp:
        progress.stage(f"writing {arch} GGUF ({outtype}, {model.cfg.n_layers} layers, vocab "
                       f"{layout.vocab_size} + {head_rows(layout)} head rows)")
        if outtype in K_QUANTS:
            with tempfile.TemporaryDirectory(dir=out.parent) as work:
                f32 = Path(work) / "f32.gguf"
                write_gguf_py(model, f32, target, "f32", tokenizer, progress, verdicts, source)
                progress.stage(f"quantizing to {outtype} with llama.cpp")
                quantize_with_llama_cpp(f32, tmp, outtype)
        else:
            write_gguf_py(model, tmp, target, outtype, tokenizer, progress, verdicts, source)
        progress.stage("reading back with gguf.GGUFReader and verifying")
        report = verify_gguf(tmp, source, target, model.layout)
        progress.stage(report["summary"])
    return report
