"""Metric names (one place), the batch histogram, health, and the /metrics server.

Every service's collectors live in its own package (inference/metrics.py, features/metrics.py,
alerts/metrics.py, trainer/metrics.py) and are built on a registry passed in, never at import,
so tests use a fresh one. The names stay here, one list the dashboards and rules are checked
against.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from typing_extensions import override

EVENTS_CONSUMED = "driftline_events_consumed_total"
EVENTS_PRODUCED = "driftline_events_produced_total"
DEAD_LETTERS = "driftline_dead_letters_total"
BATCH_SIZE = "driftline_batch_size"
INFERENCE_SECONDS = "driftline_inference_seconds"
END_TO_END_SECONDS = "driftline_end_to_end_latency_seconds"
CONFIDENCE = "driftline_prediction_confidence"
PREDICTIONS = "driftline_predictions_total"
MODEL_VERSION = "driftline_model_version"
BATCH_FAILURES = "driftline_batch_failures_total"
MODEL_SWAPS = "driftline_model_swaps_total"
MODEL_SWAP_SECONDS = "driftline_model_swap_seconds"
CONSUMER_LAG = "driftline_consumer_lag"
READY = "driftline_ready"

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONFIDENCE_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class BatchHistogram(Collector):
    """A labelled histogram fed a whole batch of observations at once (numpy, no per-event loop)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: list[str],
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._series: dict[tuple[str, ...], tuple[npt.NDArray[np.int64], list[float]]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, labels: tuple[str, ...], values: npt.ArrayLike) -> None:
        data = np.asarray(values, dtype=np.float64).ravel()
        # Bucket i counts values <= bounds[i]; the last slot is +Inf.
        slots = np.searchsorted(self.bounds, data, side="left")
        counts = np.bincount(slots, minlength=len(self.bounds) + 1)
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = (np.zeros(len(self.bounds) + 1, dtype=np.int64), [0.0])
                self._series[labels] = series
            series[0][:] += counts
            series[1][0] += float(data.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            for labels, (counts, total) in self._series.items():
                cumulative = np.cumsum(counts).tolist()
                edges = [repr(float(b)) for b in self.bounds.tolist()] + ["+Inf"]
                family.add_metric(list(labels), list(zip(edges, cumulative, strict=True)), total[0])
        yield family


class Health:
    """Liveness (the loop ticks) and readiness (a check the service supplies)."""

    def __init__(self, ready: Callable[[], bool], stale_after_s: float = 60.0) -> None:
        self._ready = ready
        self._stale_after_s = stale_after_s
        self._last_tick = time.monotonic()

    def tick(self) -> None:
        self._last_tick = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self._last_tick < self._stale_after_s

    def ready(self) -> bool:
        return self.alive() and self._ready()


def serve(
    registry: CollectorRegistry, health: Health, port: int, host: str = "0.0.0.0"
) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz on a daemon thread; returns the server to shut down."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body, code, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
            elif self.path.startswith("/healthz"):
                ok = health.alive()
                body, code, ctype = (
                    (b"ok\n" if ok else b"stalled\n"),
                    (200 if ok else 503),
                    "text/plain",
                )
            elif self.path.startswith("/readyz"):
                ok = health.ready()
                body, code, ctype = (
                    (b"ready\n" if ok else b"not ready\n"),
                    (200 if ok else 503),
                    "text/plain",
                )
            else:
                body, code, ctype = b"not found\n", 404, "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        @override
        def log_message(self, format: str, *args: object) -> None:
            """Scrapes and probes are not worth a log line each."""

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


# The trainer's metrics (TrainerMetrics below).
TRAININGS = "driftline_trainings_total"
TRAINING_SECONDS = "driftline_training_seconds"
TRAINING_IN_PROGRESS = "driftline_training_in_progress"
GATE_DECISIONS = "driftline_gate_decisions_total"
GATE_SCORE = "driftline_gate_score"
LABELS_BUFFERED = "driftline_labels_buffered"
LABELS_SINCE_TRAINING = "driftline_labels_since_training"
TRAINING_EXAMPLE_AGE = "driftline_training_example_age_seconds"
CHANGE_POINT_TIME = "driftline_change_point_timestamp_seconds"
POST_CHANGE_EXAMPLES = "driftline_post_change_examples"
TRAINING_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


# The features app's metrics (FeaturesMetrics below).
FEATURE_EVENTS = "driftline_feature_events_total"
FEATURE_WRITES = "driftline_feature_writes_total"
FEATURE_FLUSH_SECONDS = "driftline_feature_flush_seconds"
FEATURE_STORE_ERRORS = "driftline_feature_store_errors_total"
FEATURE_STORE_UP = "driftline_feature_store_up"
FEATURE_DIRTY_WINDOWS = "driftline_feature_dirty_windows"
JOIN_ENTRIES = "driftline_join_entries"
LABELS_JOINED = "driftline_labels_joined_total"
# Live accuracy by event time. Counters add up across join workers; the gauges are one worker's
# view (its partitions) of the newest event-time bucket with enough labels, a convenience.
ACCURACY_SCORED = "driftline_accuracy_scored_total"
ACCURACY_CONFIDENCE = "driftline_accuracy_confidence_total"
ACCURACY_LABELLED = "driftline_accuracy_labelled_total"
LABEL_DELAY_SECONDS = "driftline_label_delay_seconds"
LIVE_ACCURACY = "driftline_live_accuracy"
LIVE_ACCURACY_LABELS = "driftline_live_accuracy_labels"
LIVE_ACCURACY_COVERAGE = "driftline_live_accuracy_coverage"
LIVE_ACCURACY_LABEL_DELAY = "driftline_live_accuracy_label_delay_seconds"
LIVE_ACCURACY_ESTIMATE = "driftline_live_accuracy_estimate"
LIVE_ACCURACY_BUCKET_START = "driftline_live_accuracy_bucket_start_timestamp_seconds"
LABEL_DELAY_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 21_600.0, 86_400.0, 604_800.0)
DRIFT_SCORE = "driftline_drift_score"
DRIFT_DETECTED = "driftline_drift_detected"
DRIFT_SAMPLES = "driftline_drift_samples"
FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


# The alerting consumer's metrics (AlertsMetrics below).
ALERTS_RAISED = "driftline_alerts_raised_total"
ALERTS_SUPPRESSED = "driftline_alerts_suppressed_total"
ALERT_ASSETS_TRACKED = "driftline_alert_assets_tracked"
WEBHOOK_DELIVERIES = "driftline_webhook_deliveries_total"
WEBHOOK_RETRIES = "driftline_webhook_retries_total"
ALERTS_DEAD_LETTERED = "driftline_alerts_dead_lettered_total"
ALERTS_RESOLVED = "driftline_alerts_resolved_total"
ALERTMANAGER_POSTS = "driftline_alertmanager_posts_total"


@contextlib.contextmanager
def metrics_server(
    registry: CollectorRegistry, health: Health, port: int | None
) -> Iterator[ThreadingHTTPServer | None]:
    """/metrics, /healthz and /readyz on `port` while the block runs (nothing when unset)."""
    if not port:
        yield None
        return
    server = serve(registry, health, port)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
