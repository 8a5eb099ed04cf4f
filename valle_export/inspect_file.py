"""`valle-export inspect FILE`: the header, metadata and tensor table of any file valle-export writes
(.gguf, .onnx, encodec.cpp weight files), as plain text lines. No torch."""
from __future__ import annotations

from pathlib import Path


from . import encodec_cpp_format as fmt, graphs, names
from .errors import BadInput
from .lora_file import LoraRecord

MAX_VALUE_CHARS = 100


def _short(value) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= MAX_VALUE_CHARS else f"{text[:MAX_VALUE_CHARS]}... ({len(text)} chars)"


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:9.2f} MiB" if nbytes >= 2**20 else f"{nbytes / 1024:9.2f} KiB"


def inspect_gguf(path: Path) -> list[str]:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as err:
        raise BadInput(f"not a readable GGUF file ({str(err).splitlines()[0][:160]})", path) from None
    lines = [f"GGUF {path} ({_size(path.stat().st_size).strip()})", "metadata:"]
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        try:
            value = field.contents()
        except (ValueError, TypeError, IndexError):
            value = "(unreadable)"
        if isinstance(value, list) and len(value) > 8:
            value = f"[{', '.join(map(str, value[:4]))}, ...] ({len(value)} values)"
        lines.append(f"  {field.name:40s} {_short(value)}")
    lora = reader.fields.get(names.GGUF_LORA)
    lines.append(_adapter_line(lora.contents() if lora is not None else None, path))
    lines.append(f"tensors ({len(reader.tensors)}):")
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape))
        lines.append(f"  {t.name:40s} {t.tensor_type.name:6s} {str(shape):18s} {_size(int(t.n_bytes))}")
    return lines


def inspect_onnx(path: Path) -> list[str]:
    try:
        import onnx
    except ImportError:
        raise BadInput("inspecting .onnx files needs the onnx package (pip install 'valle-export[export]')") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf decode errors have no common base class
        raise BadInput(f"not a readable ONNX file ({str(err).splitlines()[0][:160]})", path) from None

    def dims(v) -> str:
        return "[" + ", ".join(str(d.dim_param or d.dim_value) for d in v.type.tensor_type.shape.dim) + "]"

    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    lines = [f"ONNX {path} ({_size(path.stat().st_size).strip()}), opset {opsets}", "inputs:"]
    lines += [f"  {i.name:32s} {dims(i)}" for i in model.graph.input]
    lines.append("outputs:")
    lines += [f"  {o.name:32s} {dims(o)}" for o in model.graph.output]
    lines.append("metadata:")
    lines += [f"  {p.key:32s} {_short(p.value)}" for p in model.metadata_props]
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(graphs.META_GRAPH) == "backbone":
        lines.append(_adapter_line(meta.get(graphs.META_LORA), path))
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    external = sum(1 for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    lines.append(f"initializers: {len(model.graph.initializer)} ({external} in external data)")
    lines.append("ops: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
    return lines


def inspect_encodec_cpp(path: Path) -> list[str]:
    f = fmt.read_encodec_cpp(path, check_table=False)
    h = f.hparams
    lines = [f"encodec.cpp weights {path} ({_size(path.stat().st_size).strip()})",
             "header: " + ", ".join(f"{k}={v}" for k, v in h.__dict__.items()),
             f"tensors ({len(f.tensors)}):"]
    for name, arr in f.tensors.items():
        dims = tuple(reversed(arr.shape))
        lines.append(f"  {name:48s} {fmt.TYPE_NAMES[f.types[name]]:4s} {str(dims):18s} {_size(arr.nbytes)}")
    return lines


def _adapter_line(record: str | None, path: Path) -> str:
    """`merged adapter: ...` of a model file or folder (the LoRA merged at export, or none)."""
    if record is None:
        return "merged adapter: none"
    return f"merged adapter: {LoraRecord.from_json(record, str(path)).describe()}"


def inspect_folder(path: Path) -> list[str]:
    """A uniform folder (its layout and merged adapter) or an ONNX folder (its fp32 or first backbone graph)."""
    from .layout import Layout
    from .paths import FolderKind, folder_kind

    kind = folder_kind(path)
    if kind is FolderKind.ONNX:
        graph = path / graphs.BACKBONE_FILE
        graph = graph if graph.is_file() else sorted(path.glob("backbone*.onnx"))[0]
        return [f"ONNX export folder {path}"] + inspect_onnx(graph)
    if kind is not FolderKind.UNIFORM:
        raise BadInput(f"is {kind.value}; inspect reads .gguf, .onnx, encodec.cpp files and export folders", path)
    layout = Layout.from_json((path / names.LAYOUT_FILE).read_bytes(), str(path / names.LAYOUT_FILE))
    record = path / names.LORA_RECORD_FILE
    return [f"uniform folder {path}",
            f"layout: vocab {layout.vocab_size}, hidden {layout.hidden_size}, {len(layout.heads)} heads, "
            f"{layout.position_mode} positions, {layout.hidden_act}",
            _adapter_line(record.read_text() if record.is_file() else None, path)]


def inspect_file(path: str | Path) -> list[str]:
    path = Path(path)
    if path.is_dir():
        return inspect_folder(path)
    if not path.is_file():
        raise BadInput("file not found", path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"GGUF":
        return inspect_gguf(path)
    if len(head) == 4 and int.from_bytes(head, "little") == fmt.MAGIC:
        return inspect_encodec_cpp(path)
    if path.suffix == ".onnx":
        return inspect_onnx(path)
    raise BadInput("unknown file type (expected .gguf, .onnx or an encodec.cpp weight file)", path)
