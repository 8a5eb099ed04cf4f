"""Export the uniform model to onnxruntime: a backbone graph, an AR step graph, the tables and heads as data.

    OUT_DIR/backbone[.<variant>].onnx (+ .onnx.data)    Llama decoder, interface in valle_export/graphs.py
    OUT_DIR/ar_step[.<variant>].onnx (+ .onnx.data)     the cached AR step with an in-place KV cache
                                                        (converters.onnx_step; not for fp16)
    OUT_DIR/valle_weights.safetensors                   flat input table, stacked heads, head biases (fp32)
    OUT_DIR/valle_layout.json, valle_source_config.json also stored in each graph's metadata_props

The wrapper takes and returns plain tensors and builds the transformers cache inside `forward`, so cache
objects never reach the exported interface. It is exported with the dynamo exporter (opset 23 gives the
standard Attention / RotaryEmbedding / RMSNormalization ops), with example sizes > 1 so no axis is frozen.
The backbone serves AR prefill (past length 0), the bidirectional NAR pass and, in folders without a step
graph, cached AR steps: the mask is an explicit additive input.
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache

from valle_export import graphs, names
from valle_export.backend_options import split_variant
from valle_export.errors import BadInput, ValleExportError
from valle_export.files import atomic_dir
from valle_export.progress import Progress
from reference_model.model import UniformValleModel

from .onnx_quant import quantize_graph
from .onnx_step import HEAD_DIM_MULTIPLE, build_step_graph, step_graph_supported

EXTERNAL_DATA_BYTES = 256 << 20  # graphs with more weight bytes than this keep them in a .onnx.data file
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
VARIANT_WORDS = {"int8": "dynamic int8", "q8_0": "8-bit weight blocks of 32, MatMulNBits",
                 "q4_0": "4-bit weight blocks of 32, MatMulNBits", "q4_128": "4-bit weight blocks of 128, MatMulNBits",
                 "w8a8": "int8 weights per column, int8 activations per row, integer GEMMs"}


class BackboneWrapper(nn.Module):
    """Plain tensors in and out; casts to `dtype` inside so the graph's I/O stays float32."""

    def __init__(self, model: UniformValleModel, dtype: torch.dtype):
        super().__init__()
        self.decoder = model.llama.model
        self.config = model.llama.config
        self.dtype = dtype

    def forward(self, inputs_embeds, attention_mask, position_ids, past):
        dt = self.dtype
        cache = DynamicCache(ddp_cache_data=[(past[2 * i].to(dt), past[2 * i + 1].to(dt))
                                             for i in range(len(past) // 2)], config=self.config)
        out = self.decoder(inputs_embeds=inputs_embeds.to(dt), attention_mask=attention_mask.to(dt),
                           position_ids=position_ids, cache=cache, use_cache=True)
        presents = []
        for layer in cache.layers:
            presents += [layer.keys.float(), layer.values.float()]
        return (out.last_hidden_state.float(), *presents)


def backbone_graph_spec(model: UniformValleModel) -> graphs.GraphSpec:
    c = model.llama.config
    return graphs.backbone_spec(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, c.hidden_size)


def _example_inputs(model: UniformValleModel) -> tuple:
    c = model.llama.config
    batch, seq, past = 2, 5, 3  # > 1 everywhere: sizes 0 and 1 get specialised by torch.export
    kv = [torch.randn(batch, c.num_key_value_heads, past, c.head_dim) for _ in range(2 * c.num_hidden_layers)]
    return (torch.randn(batch, seq, c.hidden_size), torch.zeros(batch, 1, seq, seq + past),
            torch.arange(seq).repeat(batch, 1), tuple(kv))


def _dynamic_shapes(n_layers: int):
    from torch.export import Dim

    batch, seq = Dim("batch", min=1), Dim("sequence", min=1)
    past, total = Dim("past_sequence", min=0), Dim("total_sequence", min=1)
    kv = tuple({0: batch, 2: past} for _ in range(2 * n_layers))
    return ({0: batch, 1: seq}, {0: batch, 2: seq, 3: total}, {0: batch, 1: seq}, kv)


def weights_fingerprint(model: UniformValleModel) -> str:
    """sha256 of the runtime weights (table, heads, biases as float32): ties a graph to its weights file."""
    import hashlib

    digest = hashlib.sha256()
    for t in (model.table, model.llama.lm_head.weight, model.head_bias):
        digest.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _lora_metadata(model: UniformValleModel) -> dict[str, str]:
    """The merged adapter's record (nothing when none was merged)."""
    return {} if model.lora is None else {graphs.META_LORA: model.lora.to_json()}


def _metadata(model: UniformValleModel, dtype: str) -> dict[str, str]:
    return {graphs.META_LAYOUT: model.layout.to_json(), graphs.META_SOURCE_CONFIG: json.dumps(model.cfg.raw),
            graphs.META_GRAPH: "backbone", graphs.META_DTYPE: dtype,
            graphs.META_WEIGHTS_FINGERPRINT: weights_fingerprint(model), **_lora_metadata(model)}


def export_backbone(model: UniformValleModel, path: Path, dtype: str, opset: int) -> None:
    """torch.export the wrapper and save `path` (external data when large), metadata attached."""
    import onnx

    spec = backbone_graph_spec(model)
    wrapper = BackboneWrapper(model, DTYPES[dtype]).eval()
    if dtype != "fp32":  # on a copy: the model's own tensors feed the runtime weights and the step graph
        wrapper = copy.deepcopy(wrapper).to(DTYPES[dtype])
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # torchvision-not-installed notices
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, _example_inputs(model), input_names=spec.input_names, output_names=spec.output_names,
            dynamic_shapes=_dynamic_shapes(model.llama.config.num_hidden_layers), opset_version=opset,
            dynamo=True, verbose=False)
    proto = program.model_proto
    for k, v in _metadata(model, dtype).items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    _save(proto, path)


def _save(proto, path: Path) -> None:
    import onnx

    weight_bytes = sum(t.raw_data.__len__() for t in proto.graph.initializer)
    if weight_bytes > EXTERNAL_DATA_BYTES:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))


def save_runtime_weights(model: UniformValleModel, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({graphs.EMBED_TENSOR: model.table.detach().contiguous(),
               graphs.HEAD_WEIGHT_TENSOR: model.llama.lm_head.weight.detach().contiguous(),
               graphs.HEAD_BIAS_TENSOR: model.head_bias.contiguous()}, str(path),
              metadata={graphs.META_LAYOUT: model.layout.to_json(),
                        graphs.META_WEIGHTS_FINGERPRINT: weights_fingerprint(model), **_lora_metadata(model)})


def export_onnx(model: UniformValleModel, out_dir: Path, opset: int = 23, dtype: str = "fp32",
                quantize: str | None = None, progress: Progress | None = None, tokenizer: Path | None = None) -> Path:
    """Write the backbone and the AR step graph (+ runtime weights, layout) into `out_dir`, checked and
    verified; returns the backbone. `quantize` may name a pair (`fast` or STEP+BACKBONE, backend_options):
    then the step graph is written in the first variant and the backbone in the second."""
    import onnx

    progress = progress or Progress(quiet=True)
    if dtype not in DTYPES:
        raise BadInput(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    try:
        step_variant, variant = split_variant(quantize or dtype)
    except BadInput as err:
        raise BadInput(f"--quantize: {err.problem}") from None
    if quantize and dtype != "fp32":
        raise BadInput(f"--quantize {quantize} starts from the fp32 graph; do not combine it with --dtype fp16")
    if not 18 <= opset <= 23:
        raise BadInput(f"--opset {opset}: supported opsets are 18..23")
    name = graphs.backbone_file(variant)
    has_step_graph = step_graph_supported(model)
    if step_variant != variant and not has_step_graph:
        raise BadInput(f"--outtype {quantize}: head size {model.llama.config.head_dim} is not a multiple of "
                       f"{HEAD_DIM_MULTIPLE}, so this model has no AR step graph to pair; export one variant")
    step_name = graphs.step_file(step_variant) if step_variant != "fp16" and has_step_graph else None
    with atomic_dir(out_dir) as tmp:
        work = Path(tempfile.mkdtemp(dir=tmp, prefix=".work"))
        progress.stage(f"exporting backbone ({dtype}, opset {opset}, {model.cfg.n_layers} layers)")
        raw = work / name if variant in DTYPES else work / "fp32.onnx"
        export_backbone(model, raw, dtype, opset)
        if variant not in DTYPES:
            progress.stage(f"quantizing the backbone's MatMuls: {variant} ({VARIANT_WORDS[variant]})")
            quantize_graph(raw, work / name, variant)
        written = [name]
        if step_name is not None:
            progress.stage("writing the AR step graph (in-place KV cache)")
            raw_step = work / (step_name if step_variant == "fp32" else "step.fp32.onnx")
            _save(build_step_graph(model, _metadata(model, "fp32")), raw_step)
            if step_variant != "fp32":
                progress.stage(f"quantizing the AR step's MatMuls: {step_variant} ({VARIANT_WORDS[step_variant]})")
                quantize_graph(raw_step, work / step_name, step_variant)
            written.append(step_name)
        progress.stage("checking graphs (onnx.checker)")
        for graph_name in written:
            try:
                onnx.checker.check_model(str(work / graph_name))
            except onnx.checker.ValidationError as err:
                raise ValleExportError(f"exported graph fails onnx.checker: {str(err).splitlines()[0]}",
                                       graph_name) from None
            for f in [work / graph_name, work / (graph_name + ".data")]:
                if f.exists():
                    shutil.move(str(f), tmp / f.name)
        shutil.rmtree(work)
        save_runtime_weights(model, tmp / graphs.WEIGHTS_FILE)
        (tmp / names.LAYOUT_FILE).write_text(model.layout.to_json())
        (tmp / names.SOURCE_CONFIG_FILE).write_text(json.dumps(model.cfg.raw, indent=1))
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / names.TOKENIZER_FILE)
        progress.stage("verifying against the reference (onnxruntime)")
        from .verify import verify_backbone

        report = verify_backbone(model, tmp, f"{step_variant}+{variant}" if step_name else variant)
        progress.stage(report.summary())
        if not report.ok:
            raise ValleExportError(f"verification failed: {report.summary()}", out_dir / name)
    return out_dir / name
