"""Batched passes on ONNX (issue 20): many sequences per backbone call, each row equal to its unbatched run
(logits within 1e-5, greedy codes identical) for batch 1..8 with mixed lengths, full passes and cached AR."""
from __future__ import annotations

import numpy as np
import pytest

from runtimes.ar_batch import ArBatch, ArRow
from runtimes.batch_cache import BatchCache, batch_mask
from runtimes.onnx_backend import OnnxBackend
from runtimes.pipeline import Guidance, generate_ar
from runtimes.samplers import SamplerSettings
from valle_export import names, sequence as seq

from .conftest import DEMO_VARIANTS, random_conditioning

TOL = 1e-5


@pytest.fixture(scope="module", params=[DEMO_VARIANTS[0], DEMO_VARIANTS[1]], ids=["segmented-noncausal",
                                                                                   "unified-causal"])
def backend(request, onnx_export):
    return OnnxBackend(onnx_export(request.param))


def _conds(n: int):
    """Mixed lengths: phonemes 5..40, prompts 0..30 frames (0 = no prompt)."""
    out = []
    for i in range(n):
        c = random_conditioning(100 + i, phonemes=5 + 5 * i, prompt_frames=max(1, 30 - 4 * i))
        out.append(c if i % 3 else type(c)(c.phn, c.lang, None))
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(1e-12, float(np.abs(b).max())))


def test_mask_never_leaves_a_query_row_fully_masked():
    mask, new_valid = batch_mask(np.array([[True, False], [False, False]]), [3, 1], [True, False])
    assert mask.shape == (2, 1, 3, 5) and (np.isfinite(mask).any(axis=-1)).all()
    assert new_valid.tolist() == [[True, True, True], [True, False, False]]
    assert np.isfinite(mask[1, 0, 1]).sum() == 1, "a pad query attends to itself only"


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 8])
def test_full_passes_batched_equal_alone(backend, batch):
    """NAR (bidirectional or causal per layout) and AR full passes of mixed lengths in one call."""
    layout = backend.layout
    specs = []
    for i, c in enumerate(_conds(batch)):
        frames = 7 + 9 * i
        resp = np.random.default_rng(i).integers(0, 1024, (frames, 8))
        level = 1 + i % (layout.audio_levels - 1)
        specs.append(seq.nar_pass(layout, c.phn, c.lang, c.prompt, resp[:, :level], level) if i % 2 else
                     seq.ar_pass(layout, c.phn, c.lang, c.prompt, resp[:, 0]))
    batched = backend.batch_logits(specs)
    for spec, got in zip(specs, batched):
        want = backend.logits(spec)
        assert got.shape == want.shape and _rel(got, want) < TOL, f"{spec.head}: rel {_rel(got, want):.2e}"
        assert np.array_equal(got.argmax(-1), want.argmax(-1))


def test_cache_stack_take_compact_roundtrip(backend):
    conds = _conds(3)
    specs = [seq.ar_pass(backend.layout, c.phn, c.lang, c.prompt, []) for c in conds]
    _, cache = backend.batch_hidden([(s.rows, s.positions, True) for s in specs])
    lengths = [s.length for s in specs]
    assert cache.lengths().tolist() == lengths and cache.columns == max(lengths)
    two = cache.take([2, 0])
    assert two.lengths().tolist() == [lengths[2], lengths[0]] and two.columns == max(lengths[0], lengths[2])
    again = BatchCache.stack([two, cache.take([1])])
    assert again.lengths().tolist() == [lengths[2], lengths[0], lengths[1]]


def _batched_ar(backend, rows: list[ArRow], join_every: int = 0) -> list[np.ndarray]:
    """Step all rows together; with `join_every` k, row i joins at step i * k (continuous batching)."""
    batch, waiting, step = ArBatch(backend), list(rows), 0
    while waiting or len(batch):
        joining = [r for r in waiting if rows.index(r) * join_every <= step]
        waiting = [r for r in waiting if r not in joining]
        batch.admit(joining)
        batch.step()
        step += 1
    return [r.result for r in rows]


@pytest.mark.parametrize("batch", [1, 2, 4, 8])
def test_greedy_ar_codes_batched_equal_alone(backend, batch):
    conds = _conds(batch)
    alone = [generate_ar(backend, c, 40) for c in conds]
    together = _batched_ar(backend, [ArRow(c, 40) for c in conds])
    staggered = _batched_ar(backend, [ArRow(c, 40) for c in conds], join_every=3)
    for i, (a, t, s) in enumerate(zip(alone, together, staggered)):
        assert len(a) > 0 and np.array_equal(a, t), f"row {i}: alone {a[:8]}.. batched {t[:8]}.."
        assert np.array_equal(a, s), f"row {i}: joined late gives {s[:8]}.. (alone {a[:8]}..)"


def test_ar_step_logits_within_tolerance(backend):
    """The logits of a cached batched step (rows of different cached lengths) against `extend` alone."""
    layout = backend.layout
    conds = _conds(6)
    specs = [seq.ar_pass(layout, c.phn, c.lang, c.prompt, [5, 6, 7][: i % 4]) for i, c in enumerate(conds)]
    _, cache = backend.batch_hidden([(s.rows, s.positions, True) for s in specs])
    nxt = [seq.extend(layout, s, names.HEAD_AR, [11 + i]) for i, s in enumerate(specs)]
    hidden, _ = backend.batch_hidden([(s.rows[-1:], s.positions[-1:], True) for s in nxt], cache)
    for s, n, h in zip(specs, nxt, hidden):
        backend.prefill(s)
        want = backend.extend(n)
        got = backend.head_logits(h, names.HEAD_AR)[0]
        assert _rel(got, want) < TOL, f"rel {_rel(got, want):.2e}"


def test_sampled_and_guided_rows_keep_their_own_generators(backend):
    """Seeded sampling and AR guidance per row: the same codes alone as in a batch of mixed settings."""
    conds = _conds(4)
    hot = SamplerSettings(temperature=1.0, top_k=30)
    settings = [(hot, Guidance()), (hot, Guidance(2.0)), (SamplerSettings(temperature=0.0), Guidance(1.5)),
                (hot, Guidance())]
    alone = [generate_ar(backend, c, 30, s, np.random.default_rng(i), guidance=g)
             for i, (c, (s, g)) in enumerate(zip(conds, settings))]
    rows = [ArRow(c, 30, s, np.random.default_rng(i), g) for i, (c, (s, g)) in enumerate(zip(conds, settings))]
    for i, (a, t) in enumerate(zip(alone, _batched_ar(backend, rows, join_every=2))):
        assert np.array_equal(a, t), f"row {i}: alone {a[:8]}.. batched {t[:8]}.."


# --- cached steps of a batch on the ONNX step graph (issue 22) ---------------------------------------------------
def test_batched_steps_run_on_the_step_graph(backend, monkeypatch):
    """After the rows' prefill (one backbone call per admission), every step is ONE step-graph call with the
    KV written in place; rows of different lengths join late, retire early and outgrow the buffers (the
    reserve is cut to 2 positions), and each row's greedy codes stay identical to its run alone."""
    from runtimes import onnx_step

    assert backend.step_runner is not None, "the demo export has an AR step graph"
    monkeypatch.setattr(onnx_step, "BATCH_FREE", 2)
    calls = {"backbone": 0, "step": 0}
    run, run_bound = backend.session.run, backend.step_runner.session.run_with_iobinding

    def counted(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(backend.session, "run", counted("backbone", run), raising=False)
    monkeypatch.setattr(backend.step_runner.session, "run_with_iobinding", counted("step", run_bound), raising=False)
    conds = _conds(4)
    frames = [12, 30, 20, 30]
    batch, waiting, steps, admits, capacities = ArBatch(backend), list(range(4)), 0, 0, set()
    rows = [ArRow(c, n) for c, n in zip(conds, frames)]
    while waiting or len(batch):
        joining = [rows[i] for i in waiting if i * 4 <= steps]
        waiting = [i for i in waiting if i * 4 > steps]
        admits += bool(joining)
        batch.admit(joining)
        if len(batch):
            batch.step()
            steps += 1
            if batch.cache is not None:
                assert isinstance(batch.cache, onnx_step.StepCache), type(batch.cache)
                capacities.add(batch.cache.capacity)
    assert calls == {"backbone": admits, "step": steps}, f"{calls}: {admits} admissions, {steps} steps"
    assert len(capacities) > 2, f"the buffers never grew: capacities {sorted(capacities)}"
    backend.step_runner.session.run_with_iobinding = run_bound
    for i, (c, n, r) in enumerate(zip(conds, frames, rows)):
        alone = generate_ar(backend, c, n)
        assert np.array_equal(alone, r.result), f"row {i}: alone {alone[:8]}.. batched {r.result[:8]}.."


def test_full_step_cache_grows_by_a_quarter_and_keeps_its_rows():
    """A full cache grows by a quarter of its capacity (at least BATCH_FREE), not by doubling, so a batch stays
    near its KV budget; the rows' positions survive the copy."""
    from runtimes import onnx_step
    from runtimes.onnx_step import StepCache

    rng = np.random.default_rng(1)
    for capacity, want in ((300, 300 + onnx_step.BATCH_FREE), (2000, 2500)):
        buffers = [rng.standard_normal((2, 1, capacity, 2)).astype(np.float32) for _ in range(2)]
        cache = StepCache([b.copy() for b in buffers], [capacity, 7])
        cache._fit_next_step()
        assert cache.capacity == want, f"capacity {capacity} full -> {cache.capacity}, want {want}"
        assert all(np.array_equal(a[:, :, :capacity], b) for a, b in zip(cache.buffers, buffers))
        cache._fit_next_step()  # room for the next position now
        assert cache.capacity == want, "grew with room left"


def test_step_cache_moves_rows_from_a_padded_batch_cache():
    """A padded batch cache (gaps after shorter prefills) becomes step buffers holding each row's valid
    columns first, and comes back unchanged; take / joined keep each row's positions, also when the joined
    cache has a gap inside a row and needs more capacity than the buffers have."""
    from runtimes import onnx_step
    from runtimes.onnx_step import StepCache

    rng = np.random.default_rng(0)
    valid = np.array([[True, True, False, True], [True, False, False, False], [True, True, True, True]])
    kv = [rng.standard_normal((3, 2, 4, 8)).astype(np.float32) for _ in range(4)]
    step = StepCache.from_batch_cache(BatchCache(kv, valid))
    assert step.lengths.tolist() == [3, 1, 4] and step.capacity == 4 + onnx_step.BATCH_FREE
    for r in range(3):
        cols = np.flatnonzero(valid[r])
        for a, b in zip(kv, step.buffers):
            assert np.array_equal(b[r, :, :len(cols)], a[r][:, cols]), f"row {r}"
    back = step.as_batch_cache()
    assert back.lengths().tolist() == [3, 1, 4] and back.valid[0].tolist() == [True, True, True, False]
    small = StepCache.from_batch_cache(BatchCache(kv, valid).take([1]), reserve=1)
    assert small.capacity == 2
    wide_valid = np.ones((1, 300), dtype=bool)
    wide_valid[0, 5:9] = False  # a gap inside the row
    wide = BatchCache([rng.standard_normal((1, 2, 300, 8)).astype(np.float32) for _ in range(4)], wide_valid)
    joined = small.take([0]).joined(BatchCache(kv, valid)).joined(wide)
    assert joined.lengths.tolist() == [1, 3, 1, 4, 296] and joined.capacity >= 296
    assert np.array_equal(joined.buffers[1][1, :, :3], kv[1][0][:, [0, 1, 3]])
    assert np.array_equal(joined.buffers[0][3, :, :4], kv[0][2])
    cols = np.flatnonzero(wide_valid[0])
    assert np.array_equal(joined.buffers[2][4, :, :296], wide.kv[2][0][:, cols]), "gap row misplaced"
    assert np.array_equal(joined.take([4, 0]).buffers[3][1, :, :1], kv[3][1][:, :1])


def test_batched_step_graph_equals_batched_backbone_steps(backend):
    """The step graph's batched cached steps against the backbone's (the engine's path before the step graph
    served batches), rows of different cached lengths, 12 steps: logits within 1e-5, greedy tokens equal."""
    reference = OnnxBackend(backend.path.parent)
    reference.step_runner = None
    layout = backend.layout
    conds = _conds(5)
    specs = [seq.ar_pass(layout, c.phn, c.lang, c.prompt, [5, 6, 7][: i % 4]) for i, c in enumerate(conds)]
    queries = [(s.rows, s.positions, True) for s in specs]
    (_, cache), (_, ref_cache) = backend.batch_hidden(queries), reference.batch_hidden(queries)
    for k in range(12):
        specs = [seq.extend(layout, s, names.HEAD_AR, [40 + 7 * k + i]) for i, s in enumerate(specs)]
        step = [(s.rows[-1:], s.positions[-1:], True) for s in specs]
        got, cache = backend.batch_hidden(step, cache)
        want, ref_cache = reference.batch_hidden(step, ref_cache)
        for i, (g, w) in enumerate(zip(got, want)):
            g, w = backend.head_logits(g, names.HEAD_AR)[0], reference.head_logits(w, names.HEAD_AR)[0]
            assert _rel(g, w) < TOL and g.argmax() == w.argmax(), f"step {k}, row {i}: rel {_rel(g, w):.2e}"
