"""Intel AMX hosts: llama.cpp's AMX weight buffer crashes on quantized weights (design.md 3c), so the llama.cpp
backend loads without extra buffer types exactly where the host has AMX. The decision is tested on cpuinfo
texts of both kinds of host; the switch itself is proven on this host from llama.cpp's own report of the
buffer types it used, and quantized decodes of >= 8 tokens run in a child process so a crash fails one test.
"""
import numpy as np
import pytest

from runtimes import host_cpu
from valle_export.errors import BadInput

from .conftest import DEMO_VARIANTS, random_conditioning
from .isolated import isolated_logits

EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16\n"
SAPPHIRE_RAPIDS = ("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 "
                   "amx_bf16 amx_tile amx_int8\n")


def test_amx_detected_from_cpuinfo():
    assert host_cpu.has_amx(host_cpu.cpu_flags(SAPPHIRE_RAPIDS))
    assert not host_cpu.has_amx(host_cpu.cpu_flags(EPYC))
    assert host_cpu.cpu_flags("no flags here") == frozenset()


@pytest.mark.parametrize("cpuinfo, setting, expect", [
    (SAPPHIRE_RAPIDS, "auto", False), (EPYC, "auto", True),
    (SAPPHIRE_RAPIDS, "on", True), (EPYC, "off", False),
])
def test_extra_buffer_policy(cpuinfo, setting, expect):
    assert host_cpu.use_extra_bufts(setting, host_cpu.cpu_flags(cpuinfo)) is expect


def test_extra_buffer_setting_from_environment(monkeypatch):
    monkeypatch.setenv(host_cpu.EXTRA_BUFTS_ENV, "off")
    assert host_cpu.use_extra_bufts(None, host_cpu.cpu_flags(EPYC)) is False
    monkeypatch.setenv(host_cpu.EXTRA_BUFTS_ENV, "sometimes")
    with pytest.raises(BadInput, match="VALLE_LLAMA_EXTRA_BUFTS"):
        host_cpu.use_extra_bufts(None)


def _buffers(path, setting: str) -> list[str]:
    from runtimes.llama_backend import LlamaConfig, LlamaCppBackend, weight_buffer_types

    backend = LlamaCppBackend(path, LlamaConfig(n_ctx=256, extra_bufts=setting))  # loading never crashes
    found = weight_buffer_types()
    backend.close()
    assert found, "llama.cpp reported no model buffer (log format changed?)"
    return found


def test_llama_cpp_uses_the_buffers_the_policy_allows(gguf_export):
    pytest.importorskip("llama_cpp")
    path = gguf_export(DEMO_VARIANTS[2], "q4_0")
    off = _buffers(path, "off")
    assert not any("REPACK" in b or "AMX" in b for b in off), f"extra buffers used while off: {off}"
    auto = _buffers(path, "auto")
    if host_cpu.has_amx():
        assert auto == off, f"AMX host: auto must load like off, got {auto}"
    else:
        assert auto == _buffers(path, "on"), f"non-AMX host: auto must keep the extra buffers, got {auto}"


@pytest.mark.parametrize("outtype", ["q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"])
def test_quantized_batches_of_many_tokens_run(outtype, gguf_export, tmp_path):
    """The crash needs a batch of >= 8 tokens on quantized weights: a full AR pass and a NAR pass, isolated."""
    pytest.importorskip("llama_cpp")
    from valle_export import sequence as seq
    from runtimes.gguf_file import GgufModelFile

    path = gguf_export(DEMO_VARIANTS[2], outtype)
    layout = GgufModelFile.open(path).layout
    cond = random_conditioning(61)
    resp = np.random.default_rng(62).integers(0, 1024, (12, 8))
    specs = [seq.ar_pass(layout, cond.phn, cond.lang, cond.prompt, resp[:, 0]),
             seq.nar_pass(layout, cond.phn, cond.lang, cond.prompt, resp, 3)]
    got, label = isolated_logits("llamacpp", path, specs, tmp_path, n_ctx=256)
    assert [len(g) for g in got] == [s.n_outputs for s in specs], [g.shape for g in got]
    assert all(np.isfinite(g).all() for g in got), f"{outtype}: non-finite logits"
    assert not label["exact"], f"{outtype} labelled exact: {label}"
