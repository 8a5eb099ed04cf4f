"""The batched engine (issue 20): requests stepped together give what each gives alone (greedy: the
Synthesizer's codes; seeded sampling: the same audio alone or under load), in order, cancellable."""
from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from runtimes.engine import Audio, Done, Engine, EngineConfig, QueueFull
from runtimes.pipeline import Conditioning, generate_ar, generate_nar
from runtimes.samplers import SamplerSettings
from runtimes.synthesize import SynthesisSettings, TextInput
from runtimes.synthesizer import Synthesizer
from valle_export.errors import BadInput


SENTENCES = ["həlˈoʊ wˈɜːld.", "ðɪs ɪz ɐ tˈɛst.", "ɡʊdbˈaɪ nˈaʊ!", "wˈʌn mˈɔːɹ."]
GREEDY = SynthesisSettings(ar=SamplerSettings(temperature=0.0), seed=0, max_duration=0.6, demask_steps=4,
                           modality="ar+nar")
HOT = dataclasses.replace(GREEDY, ar=SamplerSettings(temperature=1.0, top_k=40),
                          nar=SamplerSettings(temperature=0.7), seed=7)


@pytest.fixture(scope="module")
def tts(served_model):
    return Synthesizer.open(served_model)


@pytest.fixture(scope="module")
def engine(tts):
    e = Engine(tts, EngineConfig(max_rows=8))
    yield e
    e.close()


def _pieces(tts, text):
    return tts.pieces(TextInput(phonemes=text), "sentences")


def _codes(engine, tts, text, settings):
    events = list(engine.stream(_pieces(tts, text), None, settings))
    assert isinstance(events[-1], Done) and all(isinstance(e, Audio) for e in events[:-1])
    assert [e.index for e in events[:-1]] == list(range(len(events) - 1)), "sentences out of order"
    return [e.codes for e in events[:-1]], events


@pytest.mark.parametrize("modality", ["ar+nar", "nar-len"])
def test_greedy_request_equals_the_synthesizer(engine, tts, modality):
    settings = dataclasses.replace(GREEDY, modality=modality)
    got, events = _codes(engine, tts, " ".join(SENTENCES[:3]), settings)
    want = tts.speak_detailed(TextInput(phonemes=" ".join(SENTENCES[:3])), None, settings)
    assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(got, want.codes))
    audio = np.concatenate([e.audio for e in events[:-1]])
    assert np.array_equal(audio, want.audio), "decoded audio differs from the Synthesizer's"
    usage = events[-1].summary["usage"]
    assert usage["output_tokens"] == sum(len(c) for c in want.codes) and usage["input_tokens"] > 0


def test_seeded_sentence_follows_the_seeding_rule(engine, tts):
    """Sentence i of seed s draws from default_rng([s, i]), AR then NAR levels (as `synthesize`)."""
    got, _ = _codes(engine, tts, " ".join(SENTENCES[:2]), HOT)
    for i, (phn, lang, _) in enumerate(_pieces(tts, " ".join(SENTENCES[:2]))):
        rng, cond = np.random.default_rng([HOT.seed, i]), Conditioning(phn, lang, None)
        codes0 = generate_ar(tts.backend, cond, 45, HOT.ar, rng)
        assert np.array_equal(got[i], generate_nar(tts.backend, cond, codes0, HOT.nar, rng)), f"sentence {i}"


def test_eight_concurrent_requests_equal_alone(engine, tts):
    texts = [" ".join(SENTENCES[i % 4: i % 4 + 2]) for i in range(8)]
    settings = [dataclasses.replace(HOT, seed=i) if i % 2 else GREEDY for i in range(8)]
    alone = [_codes(engine, tts, t, s)[0] for t, s in zip(texts, settings)]
    steps0, rows0 = engine.stats.ar_steps, engine.stats.ar_row_steps
    results: dict[int, list] = {}

    def client(i):
        results[i] = _codes(engine, tts, texts[i], settings[i])[0]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(8):
        assert len(results[i]) == len(alone[i]) and all(np.array_equal(a, b) for a, b in zip(results[i], alone[i])), i
    mean_batch = (engine.stats.ar_row_steps - rows0) / max(1, engine.stats.ar_steps - steps0)
    assert mean_batch > 1.5, f"concurrent requests were not batched (mean AR batch {mean_batch:.2f})"


def test_cancel_frees_rows_and_stops_events(engine, tts):
    long = dataclasses.replace(GREEDY, max_duration=3.0, ar=SamplerSettings(temperature=1.0), seed=3)
    events = []
    job = engine.submit(_pieces(tts, " ".join(SENTENCES * 3)), None, long, events.append)
    time.sleep(0.05)
    engine.cancel(job)
    deadline = time.time() + 10
    while engine.active_rows() and time.time() < deadline:
        time.sleep(0.01)
    assert engine.active_rows() == 0 and job.finished
    n = len(events)
    time.sleep(0.2)
    assert len(events) == n and not any(isinstance(e, Done) for e in events), "events after cancellation"


def test_full_queue_and_other_tasks_are_refused(tts):
    e = Engine(tts, EngineConfig(max_queue=0))
    try:
        with pytest.raises(QueueFull) as info:
            e.submit(_pieces(tts, SENTENCES[0]), None, GREEDY, lambda ev: None)
        assert info.value.retry_after >= 1 and e.stats.rejected == 1
        with pytest.raises(BadInput, match="task 'ns' is not served by the engine"):
            e.submit(_pieces(tts, SENTENCES[0]), None, dataclasses.replace(GREEDY, task="ns"), lambda ev: None)
    finally:
        e.close()


def test_nar_finishes_the_first_sentence_in_nar_first(tts):
    """Three one-sentence requests at once, one sentence per NAR call: the NAR unit keeps the sentence that
    reached NAR first until it is decoded (its audio after levels - 1 NAR calls, the next after twice that),
    instead of round-robin, where every request finished only at the end."""
    e = Engine(tts, EngineConfig(max_rows=8, nar_rows=1))
    done_at: dict[int, int] = {}
    try:
        jobs = []
        for i in range(3):
            def emit(ev, i=i):
                if isinstance(ev, Done):
                    done_at[i] = e.stats.nar_units
            jobs.append(e.submit(_pieces(tts, SENTENCES[0]), None, GREEDY, emit))
        deadline = time.time() + 60
        while len(done_at) < 3 and time.time() < deadline:
            time.sleep(0.01)
    finally:
        e.close()
    per_sentence = tts.backend.layout.audio_levels - 1
    assert done_at == {i: (i + 1) * per_sentence for i in range(3)}, \
        f"NAR calls done when each request finished: {done_at} (finish-first: {per_sentence} apart)"


def test_kv_budget_counts_every_stream_at_the_longest_row(tts):
    """The AR batch's caches are padded to their widest row, so the budget is streams x the longest row: with
    room for exactly two rows of the long request, it and two short ones (which a sum of each row's own
    length would admit together) step at most two at a time."""
    long = dataclasses.replace(GREEDY, max_duration=1.2)
    e = Engine(tts, EngineConfig(max_rows=8))
    piece = _pieces(tts, SENTENCES[0])
    longest = len(piece[0][0]) + int(long.max_duration * tts.backend.layout.frame_rate) + 8
    e.config = EngineConfig(max_rows=8, max_kv_bytes=e._kv_bytes(2, longest))
    widest: list[int] = []
    step = e._ar.step

    def recording_step():
        widest.append(e._ar.streams)
        return step()

    e._ar.step = recording_step
    try:
        short = dataclasses.replace(GREEDY, max_duration=0.1)
        jobs = [e.submit(piece, None, s, lambda ev: None) for s in (long, short, short)]
        deadline = time.time() + 60
        while not all(j.finished for j in jobs) and time.time() < deadline:
            time.sleep(0.01)
    finally:
        e.close()
    assert all(j.finished for j in jobs) and widest, "the requests did not finish"
    assert max(widest) == 2, f"AR batch sizes {sorted(set(widest))} under a two-long-rows KV budget"


def test_nar_len_requests_demask_together(tts):
    """NAR-len sentences of concurrent requests take their demasking steps in shared calls (finish-first, up
    to `nar_rows` per call), and each request still gets the codes it gets alone from the Synthesizer."""
    settings = [dataclasses.replace(GREEDY, modality="nar-len"),
                dataclasses.replace(HOT, modality="nar-len", seed=5),
                dataclasses.replace(HOT, modality="nar-len", seed=6)]
    alone = [tts.speak_detailed(TextInput(phonemes=SENTENCES[i]), None, s).codes[0] for i, s in enumerate(settings)]
    e = Engine(tts, EngineConfig(max_rows=8))
    got: dict[int, np.ndarray] = {}
    try:
        with e._wake:  # all three wait before the engine admits any (the lock is reentrant)
            jobs = [e.submit(_pieces(tts, SENTENCES[i]), None, s,
                             lambda ev, i=i: got.__setitem__(i, ev.codes) if isinstance(ev, Audio) else None)
                    for i, s in enumerate(settings)]
        deadline = time.time() + 60
        while not all(j.finished for j in jobs) and time.time() < deadline:
            time.sleep(0.01)
    finally:
        e.close()
    assert sorted(got) == [0, 1, 2], f"finished: {sorted(got)}"
    for i in range(3):
        assert np.array_equal(got[i], alone[i]), f"request {i}: engine {got[i][:4, 0]}.. alone {alone[i][:4, 0]}.."
    steps = GREEDY.demask_steps
    assert e.stats.demask_units < 3 * steps, \
        f"{e.stats.demask_units} demasking calls for 3 sentences of {steps} steps: not shared"
