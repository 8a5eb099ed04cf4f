"""Output paths of every writer command, checked before any work, and temp files of interrupted writers.

Every writer (convert, demo-checkpoint, onnx, gguf, encodec, encodec-cpp, synthesize) refuses an output that
is empty, sits under a file, is a folder where a file is written (or the reverse), is one of its inputs, is a
model file inside an input folder, or (for folder exports) is a checkpoint folder or inside the input
checkpoint folder: one line, exit code 2, nothing written. SIGTERM and SIGHUP remove the temp file or folder
of an interrupted export; temps left by a killed writer are swept by the next write to the same place."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from .bad_input_checks import child_env, invoke, refused, tree_state

FOLDER_WRITERS = {
    "convert": lambda src, out: ["convert", src, out, "-q"],
    "demo-checkpoint": lambda src, out: ["demo-checkpoint", out, "-q"],
    "onnx": lambda src, out: ["onnx", src, out, "-q"],
    "encodec": lambda src, out: ["encodec", src, out, "-q"],
}
FILE_WRITERS = {
    "gguf": lambda src, out: ["gguf", src, "-o", out, "-q"],
    "encodec-cpp": lambda src, out: ["encodec-cpp", src, "-o", out, "-q"],
    "synthesize": lambda src, out: ["synthesize", src, "--backend", "torch", "--phoneme-ids", "1,5,2", "--out",
                                    out, "-q"],
}
WRITERS = {**FOLDER_WRITERS, **FILE_WRITERS}
HAS_INPUT = sorted(set(WRITERS) - {"demo-checkpoint"})


@pytest.fixture
def ckpt(demo_checkpoint):
    return demo_checkpoint()


@pytest.fixture
def place(tmp_path):
    """A working folder with a plain file, a plain folder and a folder that looks like an ONNX export."""
    (tmp_path / "afile").write_text("keep me")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "note.txt").write_text("keep me")
    onnx = tmp_path / "onnxdir"
    onnx.mkdir()
    for name in ("backbone.onnx", "valle_layout.json", "valle_weights.safetensors"):
        (onnx / name).write_text("stand-in")
    return tmp_path


def _args(command, src, out):
    return WRITERS[command](src, out)


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_empty_output_path(place, ckpt, command):
    line = refused([place, ckpt], *_args(command, ckpt, ""), needles=("output path is empty",))
    assert "Invalid value" in line


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_output_under_a_file(place, ckpt, command):
    out = place / "afile" / "out"
    refused([place, ckpt], *_args(command, ckpt, out), needles=(str(out), "afile is a file, not a folder"))


@pytest.mark.parametrize("command", sorted(FILE_WRITERS))
def test_file_output_is_an_existing_folder(place, ckpt, command):
    refused([place, ckpt], *_args(command, ckpt, place / "adir"), needles=("adir", "is a folder, expected a file"))


@pytest.mark.parametrize("command", sorted(FOLDER_WRITERS))
def test_folder_output_is_an_existing_file(place, ckpt, command):
    refused([place, ckpt], *_args(command, ckpt, place / "afile"), needles=("afile", "exists and is not a folder"))


@pytest.mark.parametrize("command", HAS_INPUT)
def test_output_is_the_input(place, ckpt, command):
    src = ckpt / "fp32.sft" if command in FILE_WRITERS else ckpt
    refused([place, ckpt], *_args(command, src, src), needles=(str(src), "output is the input"))


@pytest.mark.parametrize("command", ["gguf", "synthesize"])
@pytest.mark.parametrize("victim", ["fp32.sft", "tokenizer.json"])
def test_file_output_over_a_model_file_of_the_input_folder(place, ckpt, command, victim):
    refused([place, ckpt], *_args(command, ckpt, ckpt / victim),
            needles=(victim, "would overwrite a model file of the input folder"))


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("command", ["convert", "onnx", "encodec"])
def test_folder_export_inside_a_checkpoint_folder(place, ckpt, command, depth):
    src = ckpt / "fp32.sft" if command == "encodec" else ckpt  # encodec: the checkpoint file as its WEIGHTS
    out = ckpt / "export" if depth == 1 else ckpt / "a" / "export"
    refused([place, ckpt], *_args(command, src, out), needles=(str(out), "never written inside the checkpoint"))


@pytest.mark.parametrize("command", sorted(FOLDER_WRITERS))
def test_folder_output_of_the_wrong_kind(place, ckpt, demo_checkpoint, command):
    """An export never lands in a checkpoint folder; a checkpoint or uniform folder never gets ONNX files."""
    other = demo_checkpoint(seed=1)  # a checkpoint folder that is not this command's input
    target = place / "onnxdir" if command in ("convert", "demo-checkpoint") else other
    kind = "an ONNX export folder" if target.name == "onnxdir" else "a checkpoint folder"
    refused([place, ckpt, other], *_args(command, ckpt, target), needles=(str(target), f"is {kind}"))


def test_synthesize_output_is_the_prompt(place, ckpt):
    from valle_export import wav

    wav.write_wav(place / "voice.wav", [0.1] * 24000, 24000)
    refused([place, ckpt], "synthesize", ckpt, "--backend", "torch", "--phoneme-ids", "1,5,2", "--prompt",
            place / "voice.wav", "--out", place / "voice.wav", "-q", needles=("voice.wav", "output is the input"))


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_output_name_too_long(place, ckpt, command):
    """An OS error about the output path (here ENAMETOOLONG): one line naming the path."""
    out = place / ("x" * 300)
    refused([place, ckpt], *_args(command, ckpt, out), needles=("x" * 300, "File name too long"))


def test_new_output_beside_inputs_is_fine(place, ckpt, tmp_path):
    """The checks do not refuse ordinary outputs: a GGUF beside the checkpoint (the default), then again."""
    out = tmp_path / "fresh.f32.gguf"
    for _ in range(2):
        r = invoke("gguf", ckpt, "-o", out, "--outtype", "f32", "-q")
        assert r.exit_code == 0, r.output
    assert out.is_file()


# --- interrupts and stale temps ----------------------------------------------------------------------------

def _temps(folder, final_name):
    return [p for p in folder.iterdir() if p.name.startswith(f".{final_name}.") and p.name.endswith(".tmp")]


@pytest.mark.parametrize("sig, command", [(signal.SIGTERM, "onnx"), (signal.SIGHUP, "onnx"),
                                          (signal.SIGTERM, "encodec")])
def test_signal_removes_the_temp_folder(tmp_path, ckpt, sig, command):
    out = tmp_path / "export"
    args = ["onnx", ckpt, out] if command == "onnx" else ["encodec", out]
    before = tree_state(ckpt)
    proc = subprocess.Popen([sys.executable, "-m", "valle_export.cli", *map(str, args), "-q"], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not _temps(tmp_path, "export") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _temps(tmp_path, "export"), "the export never created its temp folder"
    time.sleep(1.0)  # well inside the export
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("warning: ")]  # demo notices
    assert lines == [f"error: interrupted by {signal.Signals(sig).name}; temporary files removed"], stderr
    assert list(tmp_path.iterdir()) == [], f"left behind: {list(tmp_path.iterdir())}"
    assert tree_state(ckpt) == before


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("command", ["demo-checkpoint", "convert"])
def test_stale_temps_are_swept_on_the_next_write(tmp_path, ckpt, command):
    """Temps of a writer that was killed (dead pid, or an old temp without a pid) go; the temp of a live
    writer and a young temp without a pid stay."""
    out = tmp_path / "out"
    if command == "demo-checkpoint":  # atomic_path temps beside out/fp32.sft
        where, final, args = out, "fp32.sft", ["demo-checkpoint", out, "-q"]
    else:  # atomic_dir temps beside the output folder
        where, final, args = tmp_path, "out", ["convert", ckpt, out, "-q"]
    where.mkdir(exist_ok=True)
    dead = where / f".{final}.{_dead_pid()}.abcd1234.tmp"
    old = where / f".{final}.oldtemp1.tmp"
    live = where / f".{final}.{os.getppid()}.live1234.tmp"
    young = where / f".{final}.newtemp1.tmp"
    dead.mkdir()
    (dead / "partial").write_bytes(b"\x00" * 1000)
    for p in (old, live, young):
        p.write_text("partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert not dead.exists() and not old.exists(), "stale temps were not swept"
    assert live.exists() and young.exists(), "a temp that may belong to a running writer was removed"


def test_interrupt_inside_a_destructor_prints_no_traceback(capsys):
    """A signal landing in a `__del__` cannot unwind; the CLI's unraisable hook keeps it quiet (the command
    still cancels before committing: PENDING_SIGNALS), while any other unraisable error is still printed."""
    import sys

    from valle_export.cli import _quiet_unraisable
    from valle_export.errors import Interrupted

    class RaisesOnDelete:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    old, sys.unraisablehook = sys.unraisablehook, _quiet_unraisable
    try:
        RaisesOnDelete(Interrupted(15))  # freed at once: its __del__ raises into the hook
        quiet = capsys.readouterr().err
        RaisesOnDelete(ValueError("boom"))
        loud = capsys.readouterr().err
    finally:
        sys.unraisablehook = old
    assert quiet == "", quiet
    assert "boom" in loud and "Traceback" in loud, loud
