"""One CLI vocabulary: `-o/--output` on every writer (the positional form still works, never both), one
precision word set (`onnx --outtype f32|f16|int8` as `gguf --outtype`), `--phoneme-ids` always ids and `--lang`
always a language code, `--threads` / `--n-ctx` / `--quiet` wherever a backend is opened."""
import json
import re

import pytest

from valle_export import graphs, names

from .bad_input_checks import invoke, refused
from .conftest import DEMO_VARIANTS


def test_demo_checkpoint_and_convert_take_dash_o(tmp_path):
    r = invoke("demo-checkpoint", "-o", tmp_path / "ck", "-q")
    assert r.exit_code == 0 and (tmp_path / "ck" / names.CHECKPOINT_SFT).is_file(), r.stderr
    r = invoke("convert", tmp_path / "ck", "--output", tmp_path / "uniform", "-q")
    assert r.exit_code == 0 and (tmp_path / "uniform" / names.LAYOUT_FILE).is_file(), r.stderr


@pytest.mark.parametrize("command", ["convert", "onnx"])
def test_output_given_twice_or_never_is_one_line(command, tmp_path, demo_checkpoint):
    ckpt = demo_checkpoint()
    refused([tmp_path, ckpt], command, ckpt, tmp_path / "a", "-o", tmp_path / "b", "-q",
            needles=("give the output once",))
    refused([tmp_path, ckpt], command, ckpt, "-q", needles=("missing the output",))


def test_encodec_output_forms(tmp_path):
    refused([tmp_path], "encodec", "-q", needles=("missing the output",))
    refused([tmp_path], "encodec", tmp_path / "w", tmp_path / "x", "-o", tmp_path / "y", "-q",
            needles=("[WEIGHTS] -o OUT_DIR",))


def test_onnx_outtype_words(tmp_path, demo_checkpoint):
    ckpt = demo_checkpoint(*DEMO_VARIANTS[2])
    refused([tmp_path, ckpt], "onnx", ckpt, "-o", tmp_path / "o", "--outtype", "f16", "--dtype", "fp16", "-q",
            needles=("give --outtype alone",))
    r = invoke("onnx", ckpt, "-o", tmp_path / "o", "--outtype", "f16", "-q")
    assert r.exit_code == 0 and (tmp_path / "o" / graphs.backbone_file("fp16")).is_file(), \
        (r.stderr, sorted(p.name for p in (tmp_path / "o").iterdir()))


def test_generate_speaks_the_synthesize_words(demo_checkpoint):
    r = invoke("generate", demo_checkpoint(), "--phoneme-ids", "1,5,9,2", "--lang", "de", "--max-frames", "4",
               "--prompt-frames", "8", "--json", "-q")
    assert r.exit_code == 0, r.stderr
    frames = json.loads(r.stdout)["frames"]
    assert 0 <= frames <= 4, r.stdout
    refused([], "generate", demo_checkpoint(), "--phonemes", "1,2", needles=("No such option",))


def test_check_fixture_quiet_and_threads(tmp_path):
    from .conftest import fixture_dirs

    fixture = fixture_dirs()[0]
    r = invoke("check-fixture", fixture, "--threads", "1", "--n-ctx", "1024", "-q")
    met = re.search(r"torch: (\d+)/(\d+) cases meet", r.stdout)
    assert r.exit_code == 0 and met and met.group(1) == met.group(2) and int(met.group(1)) >= 20, r.stdout + r.stderr
    assert r.stderr.strip() == "", f"--quiet still printed: {r.stderr}"
