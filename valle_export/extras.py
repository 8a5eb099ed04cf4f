"""Optional dependencies and the extra that installs each, named once.

A command that needs a missing optional module fails with one line naming the `pip install` to run (the CLI
maps `ModuleNotFoundError` through `missing_extra`). Imports: stdlib.
"""
from __future__ import annotations

# top-level module -> extra of valle-export that installs it
OPTIONAL_MODULES: dict[str, str] = {
    "torch": "export",
    "transformers": "export",
    "onnx": "export",
    "onnxscript": "export",
    "yaml": "export",
    "llama_cpp": "llamacpp",
    "ggml": "ggml",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "prometheus_client": "serve",
    "lameenc": "serve",
    "ray": "ray",
}


def missing_extra(err: ImportError) -> str | None:
    """The one-line message for an optional module that is not installed, or None if `err` is about
    anything else (a broken install, a missing core dependency: those keep their own report)."""
    module = (getattr(err, "name", None) or "").split(".")[0]
    if not isinstance(err, ModuleNotFoundError) or module not in OPTIONAL_MODULES:
        return None
    extra = OPTIONAL_MODULES[module]
    return f"this command needs {module}, which is not installed: pip install 'valle-export[{extra}]'"
