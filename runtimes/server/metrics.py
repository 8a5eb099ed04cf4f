"""`GET /metrics`: the engine's counters in Prometheus' text format, read at scrape time (no second copy
of any number)."""
from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class EngineCollector:
    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        e, s = self.engine, self.engine.stats
        yield GaugeMetricFamily("valle_queue_depth", "Requests waiting for their first row.", value=e.queue_depth())
        yield GaugeMetricFamily("valle_active_rows", "Sentences being synthesized.", value=e.active_rows())
        yield GaugeMetricFamily("valle_ar_batch_size", "Rows in the latest batched AR step.", value=s.last_batch)
        yield GaugeMetricFamily("valle_ar_batch_size_mean", "Mean rows per AR step since start.",
                                value=s.ar_row_steps / s.ar_steps if s.ar_steps else 0.0)
        yield CounterMetricFamily("valle_ar_steps", "Batched AR steps run.", value=s.ar_steps)
        yield GaugeMetricFamily("valle_ar_row_steps_per_second", "AR tokens per second of AR compute.",
                                value=s.ar_row_steps / s.ar_seconds if s.ar_seconds else 0.0)
        yield GaugeMetricFamily("valle_time_to_first_audio_seconds", "Mean over the last 256 requests.",
                                value=float(np.mean(s.first_audio_s)) if s.first_audio_s else 0.0)
        yield GaugeMetricFamily("valle_real_time_factor", "Wall time / audio time, mean of the last 256 requests.",
                                value=float(np.mean(s.rtf)) if s.rtf else 0.0)
        yield CounterMetricFamily("valle_requests_rejected", "Requests refused with 429 (queue full).",
                                  value=s.rejected)
        done = CounterMetricFamily("valle_requests", "Requests by outcome.", labels=["outcome"])
        for outcome, n in (("done", s.jobs_done), ("failed", s.jobs_failed), ("cancelled", s.jobs_cancelled)):
            done.add_metric([outcome], n)
        yield done
        yield CounterMetricFamily("valle_audio_seconds", "Audio produced.", value=s.audio_seconds)


def metrics_text(engine) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    return generate_latest(registry)
