"""The AR step graph: one new position per sequence against a KV cache that is updated in place.

Why a second graph: the backbone graph (dynamo-exported, `onnx_export`) serves every pass with an explicit
mask, so each cached step concatenates the whole past into a fresh present tensor: at 800 cached positions
that copy costs as much as reading the 4-bit weights. This graph is written by hand from the same weights
with onnxruntime's fused CPU operators, for the one job of a decode step:
- `GroupQueryAttention` over a preallocated cache buffer [batch, heads, capacity, head_dim] that the runtime
  binds as both past input and present output (`runtimes.onnx_step`): the new key/value is written at
  `seqlens_k`, nothing is copied, and the query attends to positions 0..seqlens_k (causal by index, which is
  what every AR step of the original needs);
- rotary embedding from explicit `position_ids` (the original's positions restart per segment), q, k, v
  fused into one MatMul and gate, up into one, residual adds fused into the RMS norms: about 12 nodes per
  layer instead of 30, which matters when a step's work is only 4-8 ms.
The fp32 step graph computes the same function as the backbone's cached step (checked at export); the
quantized variants quantize its MatMuls exactly as the backbone's (`onnx_quant`). Imports: torch, onnx.
"""
from __future__ import annotations

import numpy as np

from valle_export import graphs

MS = "com.microsoft"
HEAD_DIM_MULTIPLE = 8  # onnxruntime's GroupQueryAttention needs head_size % 8 == 0


def step_graph_supported(model) -> bool:
    """Whether the step graph can run this model (else its folder steps on the backbone)."""
    return model.llama.config.head_dim % HEAD_DIM_MULTIPLE == 0


def _weight(linear) -> np.ndarray:
    """A torch Linear's weight as the [in, out] float32 matrix a MatMul multiplies by."""
    return linear.weight.detach().float().numpy().T.copy()


def _rotary_caches(inv_freq: np.ndarray, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos / sin [positions, head_dim / 2] as the reference computes them (float32 angle products)."""
    angles = np.arange(positions, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def build_step_graph(model, metadata: dict[str, str]):
    """The fp32 step graph of `model` (a `UniformValleModel`), interface `graphs.step_spec`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = model.llama.config
    decoder = model.llama.model
    n_layers, heads, kv_heads, head_dim, d = (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
                                               c.head_dim, c.hidden_size)
    spec = graphs.step_spec(n_layers, kv_heads, head_dim, d)
    inits: list = []
    nodes: list = []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> None:
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}.{len(nodes)}", domain=domain, **attrs))

    cos, sin = _rotary_caches(decoder.rotary_emb.inv_freq.detach().cpu().numpy(), c.max_position_embeddings)
    const("rotary.cos", cos)
    const("rotary.sin", sin)
    eps = float(c.rms_norm_eps)
    hidden, residual = "inputs_embeds", None
    for i, layer in enumerate(decoder.layers):
        p = f"layers.{i}."
        attn, mlp = layer.self_attn, layer.mlp
        norm_in = const(p + "input_layernorm", layer.input_layernorm.weight.detach().float().numpy())
        if residual is None:
            node("RMSNormalization", [hidden, norm_in], [p + "x"], axis=-1, epsilon=eps, stash_type=1)
            residual = hidden
        else:
            node("SkipSimplifiedLayerNormalization", [hidden, residual, norm_in], [p + "x", "", "", p + "in"],
                 domain=MS, epsilon=eps)
            residual = p + "in"
        qkv = np.concatenate([_weight(attn.q_proj), _weight(attn.k_proj), _weight(attn.v_proj)], axis=1)
        node("MatMul", [p + "x", const(p + "qkv", qkv)], [p + "qkv_out"])
        # packed q/k/v in, rotary from the explicit positions inside the attention kernel
        node("GroupQueryAttention", [p + "qkv_out", "", "", graphs.past_name(i, "key"), graphs.past_name(i, "value"),
                                     "seqlens_k", "total_sequence_length", "rotary.cos", "rotary.sin",
                                     "position_ids"],
             [p + "attn", graphs.present_name(i, "key"), graphs.present_name(i, "value")], domain=MS,
             num_heads=heads, kv_num_heads=kv_heads, scale=float(attn.scaling), do_rotary=1, rotary_interleaved=0)
        node("MatMul", [p + "attn", const(p + "o", _weight(attn.o_proj))], [p + "attn_out"])
        norm_post = const(p + "post_attention_layernorm", layer.post_attention_layernorm.weight.detach().float()
                          .numpy())
        node("SkipSimplifiedLayerNormalization", [p + "attn_out", residual, norm_post], [p + "y", "", "", p + "mid"],
             domain=MS, epsilon=eps)
        residual = p + "mid"
        ff = mlp.gate_proj.out_features
        gate_up = np.concatenate([_weight(mlp.gate_proj), _weight(mlp.up_proj)], axis=1)
        node("MatMul", [p + "y", const(p + "gate_up", gate_up)], [p + "gate_up_out"])
        node("Split", [p + "gate_up_out", const(p + "gate_up_split", np.array([ff, ff], np.int64))],
             [p + "gate", p + "up"], axis=-1)
        if c.hidden_act == "gelu":
            node("Gelu", [p + "gate"], [p + "act"], domain=MS)
        elif c.hidden_act == "silu":
            node("Sigmoid", [p + "gate"], [p + "sig"])
            node("Mul", [p + "gate", p + "sig"], [p + "act"])
        else:
            raise ValueError(f"step graph: unsupported hidden_act {c.hidden_act!r}")
        node("Mul", [p + "act", p + "up"], [p + "prod"])
        node("MatMul", [p + "prod", const(p + "down", _weight(mlp.down_proj))], [p + "mlp_out"])
        hidden = p + "mlp_out"
    norm_final = const("norm", decoder.norm.weight.detach().float().numpy())
    node("SkipSimplifiedLayerNormalization", [hidden, residual, norm_final], ["last_hidden_state"], domain=MS,
         epsilon=eps)

    def value_info(t: graphs.TensorSpec):
        elem = {graphs.FLOAT: TensorProto.FLOAT, graphs.INT64: TensorProto.INT64,
                graphs.INT32: TensorProto.INT32}[t.dtype]
        return helper.make_tensor_value_info(t.name, elem, list(t.dims))

    graph = helper.make_graph(nodes, "valle_ar_step", [value_info(t) for t in spec.inputs],
                              [value_info(t) for t in spec.outputs], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid(MS, 1)])
    proto.ir_version = 10
    for k, v in {**metadata, graphs.META_GRAPH: "ar_step"}.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    return proto
