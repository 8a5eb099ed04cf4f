"""The interface of every exported ONNX graph, declared once: used by the exporter (names, dynamic axes),
the checker (a session's inputs and outputs must match) and the runtimes (binding by name).

Names follow the ecosystem (optimum, onnxruntime-genai): `inputs_embeds`, `attention_mask`, `position_ids`,
`past_key_values.{i}.key|value`, `present.{i}.key|value`. The mask's last axis has its own symbolic dim
(`total_sequence`): the dynamo exporter rejects a sum of two dynamic dims. Imports: names, stdlib.
"""
from __future__ import annotations

import dataclasses

from . import names

FLOAT, INT64, INT32 = "float32", "int64", "int32"

BACKBONE_FILE = "backbone.onnx"
STEP_FILE = "ar_step.onnx"  # the AR decode step with an in-place KV cache (converters.onnx_step)
WEIGHTS_FILE = "valle_weights.safetensors"  # flat table, stacked heads, head biases (read by the runtime)
EMBED_TENSOR = "embed_tokens.weight"
HEAD_WEIGHT_TENSOR = "lm_head.weight"
# the same strings as the GGUF's keys and the uniform model's bias tensor: one spelling, in `names`
HEAD_BIAS_TENSOR = names.HEAD_BIAS_TENSOR
META_LAYOUT = names.GGUF_LAYOUT
META_SOURCE_CONFIG = names.GGUF_SOURCE_CONFIG
META_GRAPH = "valle.graph"
META_DTYPE = "valle.dtype"
# sha256 of the runtime weights an export was made with, in the graph and in the weights file: a backbone
# copied in from another model's export is refused instead of running with the wrong tables and heads
META_WEIGHTS_FINGERPRINT = "valle.weights_fingerprint"
META_LORA = "valle.lora"  # JSON LoraRecord of the adapter merged into the backbone (absent: none)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    dims: tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def backbone_file(variant: str) -> str:
    """File name of an exported backbone variant: fp32 -> backbone.onnx, fp16 / int8 -> backbone.<v>.onnx."""
    return BACKBONE_FILE if variant == "fp32" else BACKBONE_FILE.replace(".onnx", f".{variant}.onnx")


def step_file(variant: str) -> str:
    """File name of a variant's AR step graph: fp32 -> ar_step.onnx, others -> ar_step.<v>.onnx."""
    return STEP_FILE if variant == "fp32" else STEP_FILE.replace(".onnx", f".{variant}.onnx")


def past_name(layer: int, kind: str) -> str:
    return f"past_key_values.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{kind}"


def backbone_spec(n_layers: int, n_heads: int, head_dim: int, hidden: int) -> GraphSpec:
    """Llama decoder without embedding or head: AR prefill, AR decode and the bidirectional NAR pass."""
    kv_in = [TensorSpec(past_name(i, k), FLOAT, ("batch", n_heads, "past_sequence", head_dim))
             for i in range(n_layers) for k in ("key", "value")]
    kv_out = [TensorSpec(present_name(i, k), FLOAT, ("batch", n_heads, "total_sequence", head_dim))
              for i in range(n_layers) for k in ("key", "value")]
    inputs = (
        TensorSpec("inputs_embeds", FLOAT, ("batch", "sequence", hidden)),
        TensorSpec("attention_mask", FLOAT, ("batch", 1, "sequence", "total_sequence")),
        TensorSpec("position_ids", INT64, ("batch", "sequence")),
        *kv_in,
    )
    outputs = (TensorSpec("last_hidden_state", FLOAT, ("batch", "sequence", hidden)), *kv_out)
    return GraphSpec("backbone", inputs, outputs)


def step_spec(n_layers: int, n_heads: int, head_dim: int, hidden: int) -> GraphSpec:
    """One new position per sequence; the cache is a buffer of `capacity` positions bound as past AND present
    (updated in place at `seqlens_k`, the row's cached length); `total_sequence_length` = max cached + 1."""
    kv_in = [TensorSpec(past_name(i, k), FLOAT, ("batch", n_heads, "capacity", head_dim))
             for i in range(n_layers) for k in ("key", "value")]
    kv_out = [TensorSpec(present_name(i, k), FLOAT, ("batch", n_heads, "capacity", head_dim))
              for i in range(n_layers) for k in ("key", "value")]
    inputs = (
        TensorSpec("inputs_embeds", FLOAT, ("batch", 1, hidden)),
        TensorSpec("position_ids", INT64, ("batch", 1)),
        TensorSpec("seqlens_k", INT32, ("batch",)),
        TensorSpec("total_sequence_length", INT32, ()),
        *kv_in,
    )
    outputs = (TensorSpec("last_hidden_state", FLOAT, ("batch", 1, hidden)), *kv_out)
    return GraphSpec("ar_step", inputs, outputs)


# --- EnCodec ---------------------------------------------------------------------------------------------
CODEC_ENCODER_FILE = "encodec_encoder.onnx"
CODEC_DECODER_FILE = "encodec_decoder.onnx"
META_CODEC = "valle.codec"  # JSON: sample_rate, frame_rate, codebooks, bandwidth_kbps, hop


def codec_encoder_spec(codebooks: int) -> GraphSpec:
    """24 kHz mono audio -> codes, codebook-major (frames = ceil(samples / hop))."""
    return GraphSpec("encodec_encoder", (TensorSpec("audio", FLOAT, ("batch", 1, "samples")),),
                     (TensorSpec("codes", INT64, ("batch", codebooks, "frames")),))


def codec_decoder_spec(codebooks: int, name: str = "encodec_decoder") -> GraphSpec:
    """codes, codebook-major -> 24 kHz mono audio (samples = frames * hop)."""
    return GraphSpec(name, (TensorSpec("codes", INT64, ("batch", codebooks, "frames")),),
                     (TensorSpec("audio", FLOAT, ("batch", 1, "samples")),))


# --- Vocos (the original's default decoder) ---------------------------------------------------------------
# The same interface as the EnCodec decoder, so either graph decodes the same codes. Its META_CODEC JSON adds
# "decoder": "vocos", the bandwidth id, n_fft and "min_frames" (1; EnCodec's graphs need 7 and predate the key).
VOCOS_DECODER_FILE = "vocos_decoder.onnx"
DECODER_FILES = {"vocos": VOCOS_DECODER_FILE, "encodec": CODEC_DECODER_FILE}  # --decoder choice -> graph


def vocos_decoder_spec(codebooks: int) -> GraphSpec:
    return codec_decoder_spec(codebooks, "vocos_decoder")
