"""Every string that crosses a file boundary, named once.

File names in exported folders, JSON keys of the layout, native (original vall-e) state-dict names, and
uniform-model tensor names. Imports: stdlib only.
"""

# --- files -------------------------------------------------------------------------------------------
CHECKPOINT_SFT = "fp32.sft"
CHECKPOINT_PTH = "fp32.pth"
LAYOUT_FILE = "valle_layout.json"
SOURCE_CONFIG_FILE = "valle_source_config.json"
# config "name" of every seeded random-weight checkpoint (reference_model/demo.py): synthesis warns on it
DEMO_NAME_PREFIX = "valle-export-demo-"
AUDIO_FORMATS = ("wav", "flac", "ogg")  # what synthesize writes
HEAD_BIAS_FILE = "valle_head_bias.safetensors"
TOKENIZER_FILE = "tokenizer.json"
HF_CONFIG_FILE = "config.json"
LORA_RECORD_FILE = "valle_lora.json"  # the adapter merged into a uniform folder (valle_export.lora_file.LoraRecord)

# --- safetensors metadata of a native checkpoint -----------------------------------------------------
META_CONFIG = "config"
META_USERDATA = "userdata"
META_STATS = "stats"
PTH_MODULE = "module"

# --- uniform model tensors ---------------------------------------------------------------------------
HEAD_BIAS_TENSOR = "lm_head.bias"

# --- native state-dict names -------------------------------------------------------------------------
NATIVE_TEXT = "text_emb.weight"
NATIVE_RAW_TEXT = "raw_text_emb.weight"
NATIVE_LANGS = "langs_emb.weight"
NATIVE_TASKS = "tasks_emb.weight"
NATIVE_TONES = "tones_emb.weight"
NATIVE_RVQ = "rvq_l_emb.weight"
NATIVE_LEN = "len_emb.weight"
NATIVE_SEP = "sep"
NATIVE_DROPOUT_TOKEN = "dropout_token"
NATIVE_FINAL_NORM = "model.norm.weight"


def native_prompt_table(level: int) -> str:
    return f"proms_emb.embeddings.{level}.weight"


def native_resp_table(index: int) -> str:
    return f"resps_emb.embeddings.{index}.weight"


def native_head_weight(index: int) -> str:
    return f"classifiers.proj.{index}.weight"


def native_head_bias(index: int) -> str:
    return f"classifiers.proj.{index}.bias"


# per-layer tensor suffixes, with their GGUF names and shapes: valle_export.tensor_table.LAYER_TENSORS


def native_layer_tensor(layer: int, suffix: str) -> str:
    return f"model.layers.{layer}.{suffix}"


# --- uniform table / head names (layout JSON) ---------------------------------------------------------
TABLE_TEXT = "text"
TABLE_RVQ = "rvq_level"
TABLE_LANG = "lang"
TABLE_TASK = "task"
TABLE_LEN = "len"
TABLE_TONE = "tone"
TABLE_SEP = "sep"


def table_prompt(level: int) -> str:
    return f"prompt.{level}"


def resp_name(index: int, levels: int) -> str:
    """Original name of response table / head `index`: AR:0:0, NAR:{l-1}:{l}, and NAR:0:0 (NAR-len)."""
    if index == 0:
        return "AR:0:0"
    if index == levels:
        return "NAR:0:0"
    return f"NAR:{index - 1}:{index}"


# rows of `tasks_emb` for the tasks the runtime runs (the original's task symmap; fixture mrq-lora: ns 2, sr 3)
TASK_IDS = {"ns": 2, "sr": 3}

HEAD_AR = "AR:0:0"
HEAD_NAR_LEN = "NAR:0:0"
HEAD_STT = "stt"
HEAD_LEN = "len"


def head_nar(level: int) -> str:
    """Head predicting RVQ level `level` (1..levels-1) in a NAR pass."""
    return f"NAR:{level - 1}:{level}"


# --- layout JSON keys -----------------------------------------------------------------------------------
LAYOUT_SCHEMA = "valle-export/layout"
LAYOUT_SCHEMA_VERSION = 1
POSITIONS_SEGMENTED = "segmented"
POSITIONS_UNIFIED = "unified"

# --- GGUF keys (valle.*) ----------------------------------------------------------------------------------
GGUF_LAYOUT = "valle.layout"  # JSON of the Layout (also the ONNX graphs' and weights' metadata key)
GGUF_SOURCE_CONFIG = "valle.source_config"  # the native config JSON
GGUF_TOKENIZER = "valle.tokenizer"  # the phoneme tokenizer.json, when the checkpoint has one
GGUF_HEAD_ROW_START = "valle.head_row_start"  # heads are rows [start, start + sum(head rows)) of token_embd
GGUF_HEAD_BIAS = "valle.head_bias"  # float32 [sum(head rows)], heads in layout order
GGUF_INPUT_SCALE = "valle.input_scale"  # the host multiplies summed inputs by this (gemma: 1/sqrt(n_embd))
GGUF_ROPE_LAYOUT = "valle.qk_layout"  # "neox" (HF rotate-half) or "interleaved" (Q/K permuted for llama)
GGUF_LORA = "valle.lora"  # JSON LoraRecord of the adapter merged into the weights (absent: none)
GGUF_EXACTNESS = "valle.exactness"  # JSON: what stock llama.cpp computes exactly / approximately / not at all
