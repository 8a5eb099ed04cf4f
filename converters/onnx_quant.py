"""Quantized variants of an exported graph (backbone or AR step), one function per scheme, `quantize_graph`
choosing:
- weight-only blocks (onnxruntime's `MatMulNBits`): `q8_0` and `q4_0` (every MatMul weight in blocks of 32
  along the input axis, one fp32 scale per block, symmetric: the same storage scheme as the GGUF types of
  those names) and `q4_128` (4 bits in blocks of 128: onnxruntime's CPU kernel streams these at about the
  machine's read bandwidth, blocks of 32 at about 60 % of it, measured at the released shape);
- `w8a8`: integer GEMMs (below), the fast NAR.

Why not `quantize_dynamic` (the `int8` variant): that one quantizes activations with one scale per call, so
a row's output depends on what else is in the batch and on the pass length; a weight-only graph quantizes
activations (at `ACCURACY_LEVEL`) per row and per block, so a row's result does not depend on its
neighbours (batch-invariant), and its AR step reads 4-8x fewer weight bytes than fp32. Imports: onnx,
onnxruntime.quantization (never torch).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from valle_export import graphs
from valle_export.backend_options import WEIGHT_ONLY_VARIANTS

@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime's quantizers log every node they visit (and pre-processing hints) through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _save_as_variant(proto, source_meta: dict[str, str], variant: str, dst: Path) -> None:
    """Save the quantized `proto` at `dst` with the source graph's metadata, its dtype set to `variant`."""
    import onnx

    from .onnx_export import _save  # (onnx_export imports this module at load)

    del proto.metadata_props[:]
    for k, v in {**source_meta, graphs.META_DTYPE: variant}.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    _save(proto, dst)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 (MatMul weights, per-tensor) with onnxruntime's quantizer; metadata carried over."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    with _quiet_root_logger():
        # the step graph's contrib operators have no ONNX shape inference: their outputs are float
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         use_external_data_format=False, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    _save_as_variant(onnx.load(str(dst)), meta, "int8", dst)


# MatMulNBits' compute type: 4 = int8 activations (per row, per block) with integer dot products, the fast
# CPU path; 0 would dequantize weights to fp32 first
ACCURACY_LEVEL = 4


def quantize_weight_only(src: Path, dst: Path, variant: str) -> None:
    """Write `dst`: the graph `src` with every MatMul by a constant weight replaced by MatMulNBits (`variant`'s
    bits and block, symmetric); metadata carried over with the dtype set to `variant`."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer)

    model = onnx.load(str(src))
    meta = {p.key: p.value for p in model.metadata_props}
    bits, block = WEIGHT_ONLY_VARIANTS[variant]
    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=ACCURACY_LEVEL,
                                          bits=bits)
    with _quiet_root_logger():
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=True,
                                         accuracy_level=ACCURACY_LEVEL, algo_config=config)
        quantizer.process()
    _save_as_variant(quantizer.model.model, meta, variant, dst)


# --- w8a8: int8 weights per output column, int8 activations per row, integer GEMMs ---------------------------
W8A8 = "w8a8"
_ZERO_POINT = 128  # activations go in as uint8 around this fixed zero point: onnxruntime's fast u8s8 GEMM


def _quantize_columns(weight):
    """(int8 [K, N], fp32 scale [N]): symmetric, one scale per output column (max |w| -> 127)."""
    import numpy as np

    scale = np.abs(weight).max(axis=0) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.rint(weight / scale), -127, 127).astype(np.int8), scale


def _row_quantizer(x: str, p: str, opset: int, width: int) -> list:
    """Nodes giving `p + "codes"` (uint8 around the fixed zero point) and `p + "scale"` (one per row of `x`,
    whose rows hold `width` values).

    The scale is max |x| / 127 per row, found as max(ReduceMax(x), -ReduceMin(x)): two reads of x, where
    Abs then ReduceMax writes and reads a copy. From opset 21 one blocked QuantizeLinear (a block = the whole
    row) divides and rounds in place of a Div over x then a QuantizeLinear: the same codes, and the
    quantizing operators of an 812-position NAR pass at the released shape take 21 ms instead of 54 ms.
    """
    from onnx import helper

    def reduce(op: str, out: str):
        if opset >= 18:
            return helper.make_node(op, [x, "w8a8.last_axis"], [out], keepdims=1)
        return helper.make_node(op, [x], [out], axes=[-1], keepdims=1)

    nodes = [reduce("ReduceMax", p + "max"), reduce("ReduceMin", p + "min"),
             helper.make_node("Mul", [p + "min", "w8a8.minus_one"], [p + "minus_min"]),
             helper.make_node("Max", [p + "max", p + "minus_min", "w8a8.tiny"], [p + "max_abs"]),
             helper.make_node("Div", [p + "max_abs", "w8a8.max_code"], [p + "scale"])]
    if opset >= 21:
        return nodes + [helper.make_node("Shape", [p + "scale"], [p + "scale_shape"]),
                        helper.make_node("Expand", ["w8a8.zero_point", p + "scale_shape"], [p + "zero_points"]),
                        helper.make_node("QuantizeLinear", [x, p + "scale", p + "zero_points"], [p + "codes"],
                                         axis=-1, block_size=width)]
    return nodes + [helper.make_node("Div", [x, p + "scale"], [p + "scaled"]),
                    helper.make_node("QuantizeLinear", [p + "scaled", "w8a8.one", "w8a8.zero_point"], [p + "codes"])]


def quantize_w8a8(src: Path, dst: Path) -> None:
    """Write `dst`: the graph `src` with every MatMul by a constant 2-D weight computed in integers.

    Why: a NAR pass is compute-bound (800+ positions x 200 M weights); onnxruntime's u8s8 integer GEMM runs
    about 4x faster than its fp32 GEMM on AVX-512 VNNI / AMX hosts, while MatMulNBits' int8 path reaches
    about half of that. Each activation row gets its own scale (max |x| -> 127, zero point fixed at 128), so a
    row's result depends on that row only (batch- and length-invariant, unlike `quantize_dynamic`'s one scale
    per call); each weight column its own. y = (Xq - 128) @ Wq * row_scale * column_scale, accumulated in
    int32 (exact with VNNI or AMX; pre-VNNI AVX2 multiplies in saturating int16 pairs). A shared input (q, k, v
    or gate, up) is quantized once.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    consts = [numpy_helper.from_array(np.array(127.0, np.float32), "w8a8.max_code"),
              numpy_helper.from_array(np.array(-1.0, np.float32), "w8a8.minus_one"),
              numpy_helper.from_array(np.array(1e-30, np.float32), "w8a8.tiny"),
              numpy_helper.from_array(np.array([-1], np.int64), "w8a8.last_axis"),
              numpy_helper.from_array(np.array(1.0, np.float32), "w8a8.one"),
              numpy_helper.from_array(np.array(_ZERO_POINT, np.uint8), "w8a8.zero_point")]
    quantized_inputs: dict[str, tuple[str, str]] = {}  # activation name -> (uint8 codes, row scale)
    nodes, dropped = [], set()
    for node in graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None or len(w.dims) != 2 or w.data_type != TensorProto.FLOAT:
            nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        if x not in quantized_inputs:
            p = f"w8a8.{len(quantized_inputs)}."
            nodes += _row_quantizer(x, p, opset, w.dims[0])
            quantized_inputs[x] = (p + "codes", p + "scale")
        codes, row_scale = quantized_inputs[x]
        wq, col_scale = _quantize_columns(numpy_helper.to_array(w))
        consts += [numpy_helper.from_array(wq, w.name + ".w8"), numpy_helper.from_array(col_scale, w.name + ".scale")]
        dropped.add(w.name)
        # integer GEMM, int32 -> float and the column scales in one operator; then the row scales
        nodes += [helper.make_node("MatMulIntegerToFloat", [codes, w.name + ".w8", "w8a8.one", w.name + ".scale",
                                                            "w8a8.zero_point"], [y + ".col"], domain="com.microsoft"),
                  helper.make_node("Mul", [y + ".col", row_scale], [y])]
    still_used = {i for n in nodes for i in n.input}
    kept = [t for t in graph.initializer if t.name not in dropped or t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept + [c for c in consts if c.name in still_used])
    del graph.node[:]
    graph.node.extend(nodes)
    _save_as_variant(model, {p.key: p.value for p in model.metadata_props}, W8A8, dst)


def quantize_graph(src: Path, dst: Path, variant: str) -> None:
    """Write `dst`: fp32 graph `src` quantized as `variant` (int8, a weight-only variant, or w8a8)."""
    if variant == W8A8:
        quantize_w8a8(src, dst)
    elif variant in WEIGHT_ONLY_VARIANTS:
        quantize_weight_only(src, dst, variant)
    elif variant == "int8":
        quantize_int8(src, dst)
    else:
        raise ValueError(f"no quantizer for variant {variant!r}")
