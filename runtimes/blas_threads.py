"""numpy's BLAS on one thread around the host's matrix products (the heads), whatever the process set.

Why: the backends compute on every core (onnxruntime's pool, ggml's OpenMP threads), and their workers keep
spinning for a while after each call. A multi-threaded BLAS call between two backend calls then runs on cores
those workers still hold, and its own worker threads spin after it, on the cores the next backend call needs.
Measured at the released shape on 2 cores, old and new heads alternating in one process: the 7 NAR levels of a
3-sentence text took 3-8 % less (5.58 s against 5.90 s, 5.85 against 6.00, medians of 6), more when the VM is
busier (15 % in one run that set the count process-wide).

threadpoolctl finds the BLAS numpy loaded (OpenBLAS, MKL, BLIS, Accelerate) and sets its thread count for the
duration of a `with` block (about 8 us), restoring it after, so the rest of the process keeps its setting.
OpenBLAS's count is process-wide; threadpoolctl lets one thread at a time control it (others' blocks leave it
as it is), which costs at most speed: `host_weights.apply_head` sends only products whose values do not depend
on the thread count through here (2 rows and more; one row differs between one thread and two).
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
