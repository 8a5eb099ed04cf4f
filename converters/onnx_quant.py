"""Weight-only block quantization of an exported backbone graph (onnxruntime's `MatMulNBits`): the variants
`q8_0` and `q4_0` (every MatMul weight in blocks of 32 along the input axis, one fp32 scale per block,
symmetric: the same storage scheme as the GGUF types of those names).

Why not `quantize_dynamic` (the `int8` variant): that one quantizes activations with one scale per call, so
a row's output depends on what else is in the batch and on the pass length; a weight-only graph quantizes
activations (at `ACCURACY_LEVEL`) per row and per block, so a row's result does not depend on its
neighbours (batch-invariant), and its AR step reads 4-8x fewer weight bytes than fp32. Imports: onnx,
onnxruntime.quantization (never torch).
"""
from __future__ import annotations

import logging
from pathlib import Path

from valle_export import graphs

BLOCK = 32
BITS = {"q8_0": 8, "q4_0": 4}
# MatMulNBits' compute type: 4 = int8 activations (per row, per block) with integer dot products, the fast
# CPU path; 0 would dequantize weights to fp32 first
ACCURACY_LEVEL = 4


def quantize_weight_only(src: Path, dst: Path, variant: str) -> None:
    """Write `dst`: the graph `src` with every MatMul by a constant weight replaced by MatMulNBits (`variant`'s
    bits, block 32, symmetric); metadata carried over with the dtype set to `variant`."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer)

    model = onnx.load(str(src))
    meta = {p.key: p.value for p in model.metadata_props}
    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, accuracy_level=ACCURACY_LEVEL,
                                          bits=BITS[variant])
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs every node it visits through the root logger
    try:
        quantizer = MatMulNBitsQuantizer(model, bits=BITS[variant], block_size=BLOCK, is_symmetric=True,
                                         accuracy_level=ACCURACY_LEVEL, algo_config=config)
        quantizer.process()
    finally:
        root.setLevel(level)
    proto = quantizer.model.model
    del proto.metadata_props[:]
    meta[graphs.META_DTYPE] = variant
    for k, v in meta.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    from .onnx_export import _save

    _save(proto, dst)
