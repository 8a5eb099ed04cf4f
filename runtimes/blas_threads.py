"""numpy's BLAS on one thread around the host's matrix products (the heads), whatever the process set.

Why: the backends compute on every core (onnxruntime's pool, ggml's OpenMP threads), and their workers keep
spinning for a while after each call. A multi-threaded BLAS call between two backend calls then runs on cores
those workers still hold, and its own worker threads spin after it, on the cores the next backend call needs.
Measured at the released shape on 2 cores, 8 alternations in one process: the 7 NAR levels of a 3-sentence
text took 4.74 s (median) with the heads on one BLAS thread against 5.60 s on two, and one sentence's 6.46 s
against 6.76 s; one thread is also the faster path for a single AR step's head (0.08 ms).

threadpoolctl finds the BLAS numpy loaded (OpenBLAS, MKL, BLIS, Accelerate) and sets its thread count for the
duration of a `with` block (about 8 us), restoring it after, so the rest of the process keeps its setting.
OpenBLAS's count is process-wide; threadpoolctl lets one thread at a time control it (others' blocks leave it
as it is), which costs at most speed, never a result: a head's values do not depend on its thread count.
"""
from __future__ import annotations

import contextlib

_controller = None


def one_blas_thread():
    """A context manager: numpy's BLAS runs on one thread inside it (a no-op where threadpoolctl is missing)."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # a declared dependency; without it the products still run, on every BLAS thread
            return contextlib.nullcontext()
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")
