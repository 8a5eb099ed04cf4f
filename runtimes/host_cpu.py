"""What the host CPU can do, and the one llama.cpp loading decision that depends on it: the extra weight
buffer types (AMX, CPU repack).

On Intel Xeon hosts with AMX (Sapphire Rapids and later), llama.cpp 0c1e570 repacks q8_0 / q4_0 / q4_K
weights into its `AMX` buffer type and segfaults in `ggml_backend_amx_mul_mat` on the first decode of >= 8
tokens (upstream llama.cpp issue 20824, never fixed; design.md 3c). Loading with
`llama_model_params.use_extra_bufts = False` avoids it. That switch also turns off the CPU repack buffer
(q4_0 / q4_K interleaved for AVX2 / AVX-512 kernels), which is safe and faster on hosts without AMX, so the
policy is: extra buffer types on, unless the host has AMX. Measured speeds of both choices: README
("llama.cpp on Intel AMX hosts"). `VALLE_LLAMA_EXTRA_BUFTS=on|off` overrides the automatic choice.
"""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

from valle_export.errors import BadInput

AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16"})
EXTRA_BUFTS_ENV = "VALLE_LLAMA_EXTRA_BUFTS"
EXTRA_BUFTS_CHOICES = ("auto", "on", "off")


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor listed in a /proc/cpuinfo text (x86 `flags` line)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def host_flags() -> frozenset[str]:
    if platform.system() != "Linux":
        return frozenset()
    try:
        return cpu_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return frozenset()


def has_amx(flags: frozenset[str] | None = None) -> bool:
    return bool(AMX_FLAGS & (host_flags() if flags is None else flags))


def use_extra_bufts(setting: str | None = None, flags: frozenset[str] | None = None) -> bool:
    """Whether llama.cpp may place weights in its extra buffer types (AMX, CPU repack) on this host.

    `setting` is auto / on / off (None: the environment variable, else auto); auto is off exactly on AMX hosts.
    """
    setting = (setting or os.environ.get(EXTRA_BUFTS_ENV) or "auto").strip().lower()
    if setting not in EXTRA_BUFTS_CHOICES:
        raise BadInput(f"{EXTRA_BUFTS_ENV}={setting!r} is not one of {', '.join(EXTRA_BUFTS_CHOICES)}")
    if setting == "auto":
        return not has_amx(flags)
    return setting == "on"
