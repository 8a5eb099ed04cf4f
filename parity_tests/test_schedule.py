"""The NAR-len timesteps are torch.linspace's float32 values bit for bit (runtimes/schedule.py), checked against
real torch for thousands of step counts, under both of torch's CPU kernels (fused AVX2/AVX512, plain DEFAULT),
and against the timesteps the original recorded in every fixture."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from runtimes.schedule import demask_timesteps, torch_linspace_f32

from .conftest import REPO, _CANDIDATES

RANGES = [(0.0, 1.0), (1.0, 0.0), (0.1, 3.7), (-2.0, 5.0)]
MAX_STEPS = 1500

_PROBE = """
import json, sys, numpy as np, torch
ranges, n = json.loads(sys.argv[1]), int(sys.argv[2])
out = {"capability": torch.backends.cpu.get_cpu_capability(), "bits": []}
for a, b in ranges:
    out["bits"].append([torch.linspace(a, b, s, dtype=torch.float32).numpy().view(np.int32).tolist()
                        for s in range(n + 1)])
print(json.dumps(out))
"""


def _torch_bits(capability: str | None) -> tuple[str, list]:
    env = dict(os.environ)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(RANGES), str(MAX_STEPS)], env=env,
                          capture_output=True, text=True, check=True, cwd=REPO)
    out = json.loads(proc.stdout)
    return out["capability"], out["bits"]


def _mismatches(bits: list, fused: bool) -> list[tuple]:
    bad = []
    for (a, b), per_range in zip(RANGES, bits):
        for steps, want in enumerate(per_range):
            got = torch_linspace_f32(a, b, steps, fused).view(np.int32).tolist()
            if got != want:
                bad.append((a, b, steps))
    return bad


@pytest.mark.parametrize("capability,fused", [(None, True), ("default", False)])
def test_bit_identical_to_torch_linspace(capability, fused):
    """Native kernel (AVX2/AVX512 here: fused) and the DEFAULT kernel, 0..1500 steps over four ranges."""
    got_cap, bits = _torch_bits(capability)
    if capability is None and got_cap == "DEFAULT":
        pytest.skip("this CPU runs torch's DEFAULT kernel only")
    bad = _mismatches(bits, fused)
    total = len(RANGES) * (MAX_STEPS + 1)
    assert not bad, f"{len(bad)}/{total} linspace calls differ from torch ({got_cap}), first {bad[:3]}"
    # the other rounding really differs (so this comparison can fail)
    assert len(_mismatches(bits, not fused)) > total // 10


def test_numpy_linspace_is_one_ulp_off_where_the_issue_says():
    t = demask_timesteps(7)
    assert t[4] == np.float32(0.66666663), f"t[4] = {t[4]!r}"
    assert np.linspace(0, 1, 7, dtype=np.float32)[4] == np.float32(0.66666669)


def test_matches_every_recorded_schedule():
    """Every `<run>.timesteps` the original stored in every fixture file (7, 6 and 5 steps)."""
    from safetensors.numpy import load_file

    checked = 0
    for root in _CANDIDATES:
        for path in sorted(root.glob("*/cases*.safetensors")) if root.is_dir() else []:
            for name, want in load_file(str(path)).items():
                if name.endswith(".timesteps"):
                    got = demask_timesteps(len(want))
                    assert np.array_equal(got.view(np.int32), want.view(np.int32)), f"{path}:{name}: {got} != {want}"
                    checked += 1
    assert checked >= 4, f"only {checked} recorded schedules found"
