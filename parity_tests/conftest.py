"""Shared test inputs: the golden fixtures, seeded tiny demo models, and the GPU marker."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
# The shared fixtures (outputs of the ORIGINAL implementation); a copy is vendored under parity_tests/fixtures
# so that a clean checkout tests against them too. VALLE_FIXTURES overrides both.
_CANDIDATES = [Path(os.environ["VALLE_FIXTURES"])] if os.environ.get("VALLE_FIXTURES") else [
    REPO.parent / "shared" / "fixtures", REPO / "parity_tests" / "fixtures"]


LORA_FILE = "lora.sft"  # fixtures recorded WITH an adapter (check-fixture merges it for their adapter files)


def fixture_dirs() -> list[Path]:
    """Every fixture folder, those without an adapter first (tests that take one plain fixture use [0])."""
    for root in _CANDIDATES:
        if root.is_dir():
            found = sorted((p for p in root.iterdir() if (p / "cases.safetensors").is_file()),
                           key=lambda p: ((p / LORA_FILE).exists(), p.name))
            if found:
                return found
    return []


def fixture_lora(fixture: Path, uses_adapter: bool) -> Path | None:
    """The adapter file a fixture's case file needs merged (None: none)."""
    return fixture / LORA_FILE if uses_adapter else None


def lora_fixture() -> Path | None:
    """The first fixture folder recorded with an adapter (`lora.sft` beside its checkpoint), if any."""
    for root in _CANDIDATES:
        if root.is_dir():
            found = sorted(p for p in root.iterdir() if (p / LORA_FILE).is_file())
            if found:
                return found[0]
    return None


def has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers() and shutil.which("nvidia-smi") is not None


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Demo model variants used across backends: (hidden_act, positions, masks)
DEMO_VARIANTS = [
    ("gelu", "segmented", "noncausal"),
    ("gelu", "unified", "causal"),
    ("silu", "segmented", "causal"),
    ("silu", "unified", "noncausal"),
]


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory):
    """Factory: path of a tiny native demo checkpoint for a variant, written once per session."""
    from reference_model.demo import DemoSpec, write_demo_checkpoint

    made: dict[tuple, Path] = {}

    def make(hidden_act="gelu", positions="segmented", masks="noncausal", seed=0) -> Path:
        key = (hidden_act, positions, masks, seed)
        if key not in made:
            out = tmp_path_factory.mktemp(f"demo-{hidden_act}-{positions}-{masks}-{seed}")
            write_demo_checkpoint(out, DemoSpec("tiny", seed, hidden_act, positions, masks == "noncausal"))
            made[key] = out
        return made[key]

    return make


def random_conditioning(seed: int = 0, phonemes: int = 17, prompt_frames: int = 23):
    """Deterministic random text / prompt (ids inside the demo model's tables)."""
    from runtimes.pipeline import Conditioning

    rng = np.random.default_rng(seed)
    phn = np.concatenate([[1], rng.integers(3, 256, phonemes - 2), [2]]).astype(np.int64)
    return Conditioning(phn, int(rng.integers(0, 6)), rng.integers(0, 1024, (prompt_frames, 8)).astype(np.int64))


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory, demo_checkpoint):
    """Factory: folder of an ONNX export (fp32 unless asked) of a demo variant or of a checkpoint path."""
    from converters.onnx_export import export_onnx
    from reference_model.load import load_reference

    made: dict[tuple, Path] = {}

    def make(variant=DEMO_VARIANTS[0], dtype="fp32", quantize=None, checkpoint: Path | None = None,
             lora: Path | None = None) -> Path:
        src = checkpoint or demo_checkpoint(*variant)
        key = (str(src), dtype, quantize, str(lora))
        folder = (str(src), str(lora), "dir")
        if key not in made:
            out = made.get(folder) or tmp_path_factory.mktemp("onnx")
            export_onnx(load_reference(src, lora), out, dtype=dtype, quantize=quantize)
            made[key] = made[folder] = out
        return made[key]

    return make


@pytest.fixture(scope="session")
def gguf_export(tmp_path_factory, demo_checkpoint):
    """Factory: path of a GGUF (outtype, arch) of a demo variant or of a checkpoint path, written once."""
    from converters.gguf_export import export_gguf
    from reference_model.load import load_reference

    made: dict[tuple, Path] = {}

    def make(variant=DEMO_VARIANTS[0], outtype="f32", arch=None, checkpoint: Path | None = None,
             lora: Path | None = None) -> Path:
        src = checkpoint or demo_checkpoint(*variant)
        key = (str(src), outtype, arch, str(lora))
        if key not in made:
            out = tmp_path_factory.mktemp("gguf") / f"model.{outtype}.gguf"
            export_gguf(load_reference(src, lora), out, outtype, arch)
            made[key] = out
        return made[key]

    return make


@pytest.fixture(scope="session")
def served_model(onnx_export, demo_checkpoint):
    """What `valle-export serve` needs, built once per session for the serving tests: the ONNX export of a
    tiny demo (gelu, unified positions, causal masks) with its tokenizer and random-weight EnCodec graphs."""
    from click.testing import CliRunner

    from reference_model.load import tokenizer_beside
    from valle_export.cli import main

    folder = onnx_export(DEMO_VARIANTS[1])
    tokenizer = tokenizer_beside(demo_checkpoint(*DEMO_VARIANTS[1]))
    if tokenizer is not None and not (folder / tokenizer.name).is_file():
        shutil.copyfile(tokenizer, folder / tokenizer.name)
    if not (folder / "encodec_decoder.onnx").is_file():
        r = CliRunner().invoke(main, ["encodec", str(folder), "-q"])
        assert r.exit_code == 0, r.output
    return folder


@pytest.fixture(scope="module")
def uniform(tmp_path_factory, demo_checkpoint):
    """The uniform HF folder of the default demo checkpoint, made through the CLI (once per test module)."""
    from .bad_input_checks import invoke

    out = tmp_path_factory.mktemp("uniform") / "u"
    r = invoke("convert", demo_checkpoint(), out, "-q")
    assert r.exit_code == 0, r.output
    return out
