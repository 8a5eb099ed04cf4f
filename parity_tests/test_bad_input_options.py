"""Options: every numeric option range-checked when parsed, click's usage errors as one `error:` line, and a
missing optional dependency as one line naming the extra to install (issue 13 item 5). Exit code 2, nothing
written, never a traceback."""
from __future__ import annotations

import pytest

from .bad_input_checks import check_one_line, refused, run_child, tree_state

SYNTH = ["synthesize", "m.gguf", "--phoneme-ids", "1,5,2"]
BAD_NUMBERS = [
    *[(SYNTH, "--max-duration", v) for v in ("0", "-1", "nan", "inf", "-inf", "1e9", "0.01")],
    *[(SYNTH, "--ar-temperature", v) for v in ("-0.5", "nan", "inf")],
    *[(SYNTH, "--nar-temperature", v) for v in ("-1", "nan")],
    *[(SYNTH, "--top-k", v) for v in ("-1", "2.5", "ten")],
    *[(SYNTH, "--top-p", v) for v in ("1.5", "-0.1", "nan")],
    *[(SYNTH, "--min-p", v) for v in ("2", "-1", "nan")],
    *[(SYNTH, "--top-no", v) for v in ("-1", "inf", "nan")],
    *[(SYNTH, "--repetition-penalty", v) for v in ("0", "-1", "nan", "inf")],
    *[(SYNTH, "--length-penalty", v) for v in ("nan", "inf", "-inf")],
    *[(SYNTH, "--demask-steps", v) for v in ("0", "-3", "100000", "1.5")],
    *[(SYNTH, "--cfg-strength", v) for v in ("-1", "nan", "inf")],
    *[(SYNTH, "--seed", v) for v in ("-1", str(2 ** 63), str(2 ** 64), "1.5")],
    *[(SYNTH, "--prompt-seconds", v) for v in ("-1", "nan", "inf", "1e9")],
    *[(SYNTH, "--context-history", v) for v in ("-1", "1.5", "100000")],
    *[(SYNTH, "--cfg-rescale", v) for v in ("-0.1", "2", "nan")],
    *[(SYNTH, "--repetition-penalty-decay", v) for v in ("nan", "inf")],
    *[(SYNTH, "--dry-multiplier", v) for v in ("-1", "nan", "inf")],
    *[(SYNTH, "--dry-base", v) for v in ("0", "-1", "nan")],
    *[(SYNTH, "--dry-allowed-length", v) for v in ("0", "51", "2.5")],
    *[(["voice", "a.wav", "-o", "v.npz", "--codec", "c"], "--prompt-seconds", v) for v in ("-1", "nan")],
    *[(SYNTH, "--threads", v) for v in ("-1", "100000", "x")],
    *[(["demo-checkpoint", "d"], "--seed", v) for v in ("-1", str(2 ** 63))],
    *[(["encodec", "o"], "--seed", v) for v in ("-5", str(2 ** 70))],
    *[(["encodec-cpp", "-o", "o.bin"], "--seed", v) for v in ("-1",)],
    *[(["onnx", "ck", "o"], "--opset", v) for v in ("5", "99", "-1")],
    *[(["generate", "ck"], "--max-frames", v) for v in ("0", "-1", str(10 ** 9))],
    *[(["generate", "ck"], "--prompt-frames", v) for v in ("0", str(10 ** 8))],
    *[(["generate", "ck"], "--seed", v) for v in ("-1",)],
]


@pytest.mark.parametrize("base, option, value", BAD_NUMBERS,
                         ids=[f"{b[0]} {o} {v}" for b, o, v in BAD_NUMBERS])
def test_numeric_option_out_of_range(tmp_path, monkeypatch, base, option, value):
    monkeypatch.chdir(tmp_path)
    line = refused([tmp_path], *base, f"{option}={value}", "-q", needles=(option,))
    assert "Invalid value" in line


@pytest.mark.parametrize("args, needle", [
    (["demo-checkpoint", "d", "--size", "huge"], "'huge' is not one of 'tiny', 'full'"),
    (["gguf", "ck", "--outtype", "q3"], "'q3' is not one of"),
    (["synthesize", "m", "--backend", "tensorflow"], "'tensorflow' is not one of"),
    (["synthesize", "m", "--variant", "int4"], "'int4' is not one of"),
    (["synthesize", "m", "--format", "mp3"], "'mp3' is not one of"),
    (["synthesize", "m", "--modality", "nar"], "'nar' is not one of"),
    (["voice", "a.wav"], "Missing option '-o'"),
    (["onnx", "ck", "o", "--frobnicate"], "No such option '--frobnicate'"),
    (["convert"], "Missing argument 'CKPT'"),
    (["convert", "ck"], "missing the output: -o/--output (or OUT_DIR)"),
    (["encodec-cpp"], "Missing option '-o'"),
    (["transmogrify"], "No such command 'transmogrify'"),
    (["convert", "a", "b", "c"], "unexpected extra argument"),
    (["synthesize", "m", "--seed"], "Option '--seed' requires an argument"),
    (["generate", "ck", "--max-frames", "many"], "'many' is not a valid integer"),
])
def test_usage_errors_are_one_line(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    refused([tmp_path], *args, needles=(needle,))


def test_max_duration_and_demask_steps_zero_are_option_errors(tmp_path, monkeypatch):
    """Both used to fail much later with a misleading cause (the model stopped; a token id out of range)."""
    monkeypatch.chdir(tmp_path)
    for option in ("--max-duration", "--demask-steps"):
        line = refused([tmp_path], *SYNTH, option, "0", "-q", needles=(option,))
        assert "stopped" not in line and "token id" not in line


def test_unknown_text_language_is_refused_before_loading(tmp_path, demo_checkpoint):
    """An unknown --lang is token 0 (as the original); a text language espeak-ng lacks fails before any load."""
    line = refused([tmp_path, demo_checkpoint()], "synthesize", demo_checkpoint(), "--backend", "torch", "--text",
                   "hello", "--lang", "xx", "--out", tmp_path / "o.wav", "-q",
                   needles=("does not know text language 'xx'",))
    assert "loading" not in line and "Traceback" not in line


# --- missing optional dependencies ------------------------------------------------------------------------

# `sys.modules[name] = None` is how Python itself marks a module as unavailable: `import name` raises
# ModuleNotFoundError(name=name), and `importlib.util.find_spec(name)` returns None, as when not installed
# (a meta-path finder that raises would also break libraries that merely probe for optional modules).
BLOCKER = """
import sys

sys.modules[sys.argv[1]] = None
from valle_export.cli import main

main(sys.argv[2:], prog_name="valle-export")
"""


@pytest.mark.parametrize("module, extra, command", [
    ("torch", "export", "convert"),
    ("transformers", "export", "convert"),
    ("onnx", "export", "onnx"),
    ("onnxscript", "export", "onnx"),
    ("torch", "export", "encodec"),
    ("transformers", "export", "encodec-cpp"),
    ("llama_cpp", "llamacpp", "synthesize-llamacpp"),
    ("ggml", "ggml", "synthesize-ggml"),
])
def test_missing_optional_dependency_names_the_extra(tmp_path, demo_checkpoint, module, extra, command):
    ckpt = demo_checkpoint()
    args = {
        "convert": ["convert", ckpt, tmp_path / "out"],
        "onnx": ["onnx", ckpt, tmp_path / "out"],
        "encodec": ["encodec", tmp_path / "out"],
        "encodec-cpp": ["encodec-cpp", "-o", tmp_path / "out.bin"],
        "synthesize-llamacpp": ["synthesize", tmp_path / "m.gguf", "--phoneme-ids", "1,5,2", "--out",
                                tmp_path / "o.wav"],
        "synthesize-ggml": ["synthesize", tmp_path / "m.gguf", "--backend", "ggml", "--phoneme-ids", "1,5,2",
                            "--out", tmp_path / "o.wav"],
    }[command]
    before = tree_state(tmp_path, ckpt)
    r = run_child(BLOCKER, module, *args, "-q")
    line = check_one_line(r.returncode, r.stdout, r.stderr, True, f"pip install 'valle-export[{extra}]'")
    assert module.replace("_", "-") in line or module in line, line
    assert tree_state(tmp_path, ckpt) == before


def test_missing_extra_message_comes_from_one_table():
    from valle_export.extras import OPTIONAL_MODULES, missing_extra

    for module, extra in OPTIONAL_MODULES.items():
        msg = missing_extra(ModuleNotFoundError(f"No module named '{module}'", name=f"{module}.sub"))
        assert msg is not None and f"valle-export[{extra}]" in msg
    assert missing_extra(ModuleNotFoundError("No module named 'numpy'", name="numpy")) is None  # a core dep
    assert missing_extra(ImportError("broken", name="torch")) is None  # installed but broken: not "missing"
