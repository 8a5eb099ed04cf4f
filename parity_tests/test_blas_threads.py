"""The host heads run numpy's BLAS on one thread (runtimes/blas_threads.py: a multi-threaded BLAS call between
two backend calls fights their spinning workers for the cores), and leave the process's own setting as it
was. Their speed effect is measured by benchmarks, not here."""
import contextlib

import numpy as np
from threadpoolctl import ThreadpoolController

from runtimes import host_weights
from runtimes.blas_threads import one_blas_thread


def blas_threads(controller: ThreadpoolController) -> list[int]:
    return [lib["num_threads"] for lib in controller.info() if lib["user_api"] == "blas"]


def test_one_blas_thread_inside_and_the_setting_restored_after():
    controller = ThreadpoolController()
    assert blas_threads(controller), "threadpoolctl sees no BLAS loaded by numpy"
    with controller.limit(limits=2, user_api="blas"):  # a process that asked for two threads
        with one_blas_thread():
            inside = blas_threads(controller)
        after = blas_threads(controller)
    assert inside and all(n == 1 for n in inside), f"BLAS threads inside: {inside}"
    assert all(n == 2 for n in after), f"BLAS threads after: {after} (the process asked for 2)"


def test_apply_head_runs_in_one_blas_thread_and_computes_the_head(monkeypatch):
    controller, seen = ThreadpoolController(), []

    @contextlib.contextmanager
    def spy():
        with one_blas_thread():
            seen.append(blas_threads(controller))
            yield

    monkeypatch.setattr(host_weights, "one_blas_thread", spy)
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((33, 64)).astype(np.float32), rng.standard_normal(33).astype(np.float32)
    for rows in (1, 3, 40):
        hidden = rng.standard_normal((rows, 64))  # float64 in: the head computes in float32
        got = host_weights.apply_head(hidden, weight, bias)
        want = hidden.astype(np.float32).astype(np.float64) @ weight.T.astype(np.float64) + bias
        assert got.dtype == np.float32 and got.shape == (rows, 33)
        err = float(np.abs(got - want).max() / np.abs(want).max())
        assert err < 1e-6, f"{rows} rows: head relative error {err:.1e}"
    assert seen == [[1]], f"BLAS threads per head call over {host_weights.SMALL_BATCH_ROWS} rows: {seen}"


def test_blas_heads_do_not_depend_on_the_thread_count():
    """The premise of sending heads of 2 rows and more through BLAS from any thread: their values are the same
    on one thread and on two (a thread that does not control OpenBLAS's count cannot choose it)."""
    controller = ThreadpoolController()
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((1025, 1024)).astype(np.float32)
    for rows in (host_weights.SMALL_BATCH_ROWS + 1, 250):
        hidden = rng.standard_normal((rows, 1024)).astype(np.float32)
        with controller.limit(limits=1, user_api="blas"):
            one = hidden @ weight.T
        with controller.limit(limits=2, user_api="blas"):
            two = hidden @ weight.T
        assert np.array_equal(one, two), f"{rows} rows: max difference {np.abs(one - two).max():.1e}"
