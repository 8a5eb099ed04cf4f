"""`torch.linspace` in float32, bit for bit, without torch: the NAR-len demasking timesteps.

Why not `np.linspace(..., dtype=float32)`: numpy computes in float64 and rounds once, while torch's CPU kernel
(aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp, `linspace_kernel`) works in float32:

    step = (end - start) / (steps - 1)                      # float32
    t[i] = start + step * i                 for i <  steps / 2
    t[i] = end - step * (steps - 1 - i)     for i >= steps / 2

and the kernels built for AVX2 / AVX512 (the ones torch dispatches to on any x86-64 CPU from the last decade, and
GPU kernels contract the same way) evaluate each line as ONE fused multiply-add (single rounding). So the
points can sit one ulp away from numpy's: 7 steps give t[4] = 0.66666663 (torch) vs 0.66666669 (numpy), which
changes how many frames the original re-masks at that step. `fused=False` is torch's DEFAULT-capability kernel
(x86 without AVX2), which rounds the product first. The fused value is computed in float64 and rounded once:
the product of a float32 and an integer below 2**29 is exact in float64, and so is the sum for the [0, 1]
schedule (parity_tests/test_schedule.py compares both variants with torch for thousands of step counts).
"""
from __future__ import annotations

import numpy as np


def torch_linspace_f32(start: float, end: float, steps: int, fused: bool = True) -> np.ndarray:
    """float32 [steps]: what `torch.linspace(start, end, steps, dtype=torch.float32)` returns on CPU."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    start32, end32 = np.float32(start), np.float32(end)
    if steps <= 1:
        return np.full(steps, start32, dtype=np.float32)
    step = np.float32((end32 - start32) / np.float32(steps - 1))
    i = np.arange(steps, dtype=np.int64)
    rest = steps - 1 - i
    if fused:
        low = np.float64(start32) + np.float64(step) * i
        high = np.float64(end32) - np.float64(step) * rest
    else:
        low = start32 + step * i.astype(np.float32)
        high = end32 - step * rest.astype(np.float32)
    return np.where(i < steps // 2, low, high).astype(np.float32)


def demask_timesteps(steps: int) -> np.ndarray:
    """The original's NAR-len schedule: `torch.linspace(0, 1, steps)` (float32), one timestep per step."""
    return torch_linspace_f32(0.0, 1.0, steps)
