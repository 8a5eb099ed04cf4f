"""Run a native backend in a child process, so a crash inside llama.cpp or ggml fails one test instead of
killing pytest (a segfault in C code cannot be caught in-process; design.md 3c).

The child is started with `spawn` (a fork of a process that already runs torch / onnxruntime thread pools is
unsafe), imports only the torch-free runtime, computes every pass's logits and writes them to an .npz file;
the parent compares them with the reference. A child killed by a signal becomes a test failure naming the
model file and the signal.
"""
from __future__ import annotations

import json
import multiprocessing
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest

CHILD_TIMEOUT_S = 600


def _child(backend_name: str, model: str, options: dict, specs_file: str, out_file: str) -> None:
    """Open the backend and compute the logits of every pickled spec (runs in the child process)."""
    with open(specs_file, "rb") as f:
        specs = pickle.load(f)
    if backend_name == "llamacpp":
        from runtimes.llama_backend import LlamaConfig, LlamaCppBackend

        backend = LlamaCppBackend(model, LlamaConfig(**options))
    else:
        from runtimes.ggml_backend import GgmlBackend

        backend = GgmlBackend(model, **options)
    arrays = {f"logits_{i}": backend.logits(spec) for i, spec in enumerate(specs)}
    label = {"exact": backend.exact, "approximation": backend.approximation,
             "verdicts": {k: v.to_dict() for k, v in backend.verdicts.items()}}
    np.savez(out_file, **arrays)
    Path(out_file).with_suffix(".json").write_text(json.dumps(label))


def isolated_logits(backend_name: str, model: Path, specs: list, tmp_path: Path, **options) -> tuple[list, dict]:
    """(logits per spec, backend label {exact, approximation, verdicts}) computed in a child process."""
    specs_file, out_file = tmp_path / "specs.pkl", tmp_path / "logits.npz"
    specs_file.write_bytes(pickle.dumps(specs))
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_child, args=(backend_name, str(model), options, str(specs_file), str(out_file)))
    child.start()
    child.join(CHILD_TIMEOUT_S)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"{backend_name} on {model.name}: no result within {CHILD_TIMEOUT_S} s")
    if child.exitcode != 0:
        code = child.exitcode
        what = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        pytest.fail(f"{backend_name} on {model.name} crashed in its child process ({what})")
    label = json.loads(out_file.with_suffix(".json").read_text())
    with np.load(out_file) as data:
        return [data[f"logits_{i}"] for i in range(len(specs))], label
