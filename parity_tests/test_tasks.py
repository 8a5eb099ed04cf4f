"""The original's other tasks end to end: `transcribe` (stt through head 9) and `synthesize --task ns|sr`, on the
mrq-lora fixture's model (its task passes are checked against the original by check-fixture); backends agree."""
import json

import numpy as np
import pytest

from .bad_input_checks import invoke, refused
from .conftest import lora_fixture

FIXTURE = lora_fixture()
pytestmark = pytest.mark.skipif(FIXTURE is None, reason="no fixture with task cases (mrq-lora)")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A GGUF and an ONNX export of the fixture model with a (random-weight) EnCodec, and a 2 s test WAV."""
    from valle_export import wav

    work = tmp_path_factory.mktemp("tasks")
    for args in (["onnx", FIXTURE, work / "onnx"], ["encodec", work / "onnx"],
                 ["gguf", FIXTURE, "-o", work / "m.gguf", "--outtype", "f32"]):
        r = invoke(*args, "-q")
        assert r.exit_code == 0, r.stderr
    t = np.arange(48000) / 24000
    wav.write_wav(work / "in.wav", (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 1.3 * t)).astype(np.float32),
                  24000)
    return work


def _transcribe(setup, model, backend):
    r = invoke("transcribe", model, setup / "in.wav", "--codec", setup / "onnx", "--backend", backend,
               "--max-tokens", "12", "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_transcribe_same_ids_on_every_backend_and_greedy_head9(setup):
    from reference_model.backend import TorchBackend
    from reference_model.load import load_reference
    from runtimes.codec import OnnxCodec
    from runtimes.stt import audio_codes
    from valle_export import names, sequence as seq

    got = {b: _transcribe(setup, m, b)["ids"] for b, m in (("torch", FIXTURE), ("onnx", setup / "onnx"),
                                                           ("ggml", setup / "m.gguf"))}
    assert got["torch"] == got["onnx"] == got["ggml"] and len(got["torch"]) > 0, got
    # every produced id is the argmax of head 9 at the end of a full (uncached) stt pass over the ids before it
    ref = TorchBackend(load_reference(FIXTURE))
    codes = audio_codes(OnnxCodec(setup / "onnx"), setup / "in.wav", 30.0)
    assert codes.shape == (150, 8)
    ids = got["torch"]
    for k, token in enumerate(ids):
        logits = ref.logits(seq.stt_pass(ref.layout, codes, 0, [ref.layout.bos_token] + ids[:k]))
        assert logits.shape[1] == ref.layout.head(names.HEAD_STT).rows == 256
        assert int(np.argmax(logits[-1])) == token, f"step {k}"


@pytest.mark.parametrize("task", ["ns", "sr"])
def test_task_synthesis_runs_and_backends_agree(setup, task):
    from valle_export import wav

    outs = {}
    for backend, model in (("ggml", setup / "m.gguf"), ("onnx", setup / "onnx"), ("torch", FIXTURE)):
        out = setup / f"{task}-{backend}.wav"
        r = invoke("synthesize", model, "--backend", backend, "--task", task, "--modality", "nar-len",
                   "--codec", setup / "onnx", "--phoneme-ids", "1,57,26,112,4,90,2", "--prompt", setup / "in.wav",
                   "--demask-steps", "4", "--ar-temperature", "0", "--out", out, "--json", "-q")
        assert r.exit_code == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["task"] == task and summary["frames"] == 225, summary  # duration = the prompt's frames
        outs[backend] = wav.read_wav(out)[0][:, 0]
    assert np.array_equal(outs["ggml"], outs["onnx"]) and np.array_equal(outs["ggml"], outs["torch"])


def test_task_needs_a_prompt(setup, tmp_path):
    refused([tmp_path], "synthesize", setup / "m.gguf", "--backend", "ggml", "--task", "ns", "--codec",
            setup / "onnx", "--phoneme-ids", "1,2", "--out", tmp_path / "o.wav", "-q", needles=["give --prompt"])
