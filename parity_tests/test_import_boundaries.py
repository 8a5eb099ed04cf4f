"""The core and the runtimes never import torch or transformers (synthesis runs without them)."""
import subprocess
import sys

import pytest

MODULES = ["valle_export", "valle_export.cli", "valle_export.layout", "valle_export.sequence", "valle_export.config",
           "runtimes.pipeline", "runtimes.samplers", "runtimes.fixture_check", "runtimes.onnx_backend",
           "runtimes.codec", "valle_export.wav", "valle_export.encodec_cpp_format", "valle_export.inspect_file",
           "runtimes.synthesize", "runtimes.llama_backend", "runtimes.gguf_file", "runtimes.text"]


@pytest.mark.parametrize("module", MODULES)
def test_no_torch_import(module):
    code = (f"import sys, {module}; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, f"{module} imports {r.stdout.strip()} {r.stderr[-300:]}"
