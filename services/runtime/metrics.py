"""Metric names (one place) and the /metrics, /healthz and /readyz endpoints.

Collectors are built on a registry passed in, never at import, so tests use a fresh one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

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


class InferenceMetrics:
    """The inference consumer's collectors."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.consumed = Counter(EVENTS_CONSUMED, "Records consumed", ["topic"], registry=registry)
        self.produced = Counter(EVENTS_PRODUCED, "Records produced", ["topic"], registry=registry)
        self.dead_letters = Counter(
            DEAD_LETTERS, "Records dead-lettered", ["topic", "reason"], registry=registry
        )
        self.batch_size = Histogram(
            BATCH_SIZE,
            "Events per scored batch",
            ["modality"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            INFERENCE_SECONDS,
            "ONNX Runtime time per batch",
            ["modality"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.end_to_end = BatchHistogram(
            END_TO_END_SECONDS,
            "Result produced minus event time",
            ["modality"],
            LATENCY_BUCKETS,
            registry,
        )
        self.confidence = BatchHistogram(
            CONFIDENCE,
            "Confidence of the predicted class",
            ["model", "version"],
            CONFIDENCE_BUCKETS,
            registry,
        )
        self.predictions = Counter(
            PREDICTIONS, "Predictions by class", ["model", "predicted_class"], registry=registry
        )
        self.model_version = Gauge(
            MODEL_VERSION, "Model version now serving", ["model"], registry=registry
        )
        self.batch_failures = Counter(
            BATCH_FAILURES,
            "Batches rewound and retried, by the stage that failed",
            ["stage"],
            registry=registry,
        )
        self.swaps = Counter(
            MODEL_SWAPS,
            "Model version loads: outcome ok or rejected, with a bounded reason",
            ["model", "outcome", "reason"],
            registry=registry,
        )
        self.swap_seconds = Histogram(
            MODEL_SWAP_SECONDS,
            "Fetch, verify, check and warm up a version, until it serves",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            CONSUMER_LAG,
            "Records behind the partition end, from librdkafka statistics",
            ["topic", "partition"],
            registry=registry,
        )


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

        def log_message(self, format: str, *args: object) -> None:
            return

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


class TrainerMetrics:
    """The trainer service's collectors; labels are bounded (model, modality, outcome, role)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.consumed = Counter(EVENTS_CONSUMED, "Records consumed", ["topic"], registry=registry)
        self.dead_letters = Counter(
            DEAD_LETTERS, "Records dead-lettered", ["topic", "reason"], registry=registry
        )
        self.trainings = Counter(
            TRAININGS,
            "Training runs by trigger and outcome (promoted, rejected, failed, oom)",
            ["model", "trigger", "outcome"],
            registry=registry,
        )
        self.training_seconds = Histogram(
            TRAINING_SECONDS,
            "Wall time of a training run, fit to publish",
            ["model"],
            buckets=TRAINING_BUCKETS,
            registry=registry,
        )
        self.in_progress = Gauge(
            TRAINING_IN_PROGRESS, "1 while a model trains", ["model"], registry=registry
        )
        self.gate_decisions = Counter(
            GATE_DECISIONS,
            "Gate decisions (promote, reject)",
            ["model", "decision"],
            registry=registry,
        )
        self.gate_score = Gauge(
            GATE_SCORE,
            "Last gate scores on the holdout (role: challenger, champion)",
            ["model", "role"],
            registry=registry,
        )
        self.labels_buffered = Gauge(
            LABELS_BUFFERED,
            "Labelled examples in the training set",
            ["modality"],
            registry=registry,
        )
        self.labels_since_training = Gauge(
            LABELS_SINCE_TRAINING,
            "Labelled examples that arrived since the last training run",
            ["modality"],
            registry=registry,
        )
        self.example_age = Gauge(
            TRAINING_EXAMPLE_AGE,
            "Age (now minus event time) of the oldest and newest buffered training example",
            ["modality", "end"],
            registry=registry,
        )
        self.change_point = Gauge(
            CHANGE_POINT_TIME,
            "Event time of the last accuracy change point found in the labelled outcomes",
            ["modality"],
            registry=registry,
        )
        self.post_change_examples = Gauge(
            POST_CHANGE_EXAMPLES,
            "Buffered labelled examples from after the last change point",
            ["modality"],
            registry=registry,
        )


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


class FeaturesMetrics:
    """The features app's collectors; labels are bounded (topic, outcome, model, version...)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.consumed = Counter(EVENTS_CONSUMED, "Records consumed", ["topic"], registry=registry)
        self.produced = Counter(EVENTS_PRODUCED, "Records produced", ["topic"], registry=registry)
        self.dead_letters = Counter(
            DEAD_LETTERS, "Records dead-lettered", ["topic", "reason"], registry=registry
        )
        self.events = Counter(
            FEATURE_EVENTS,
            "Results folded into window statistics, by outcome (accepted, late, undecodable)",
            ["outcome"],
            registry=registry,
        )
        self.writes = Counter(
            FEATURE_WRITES,
            "Feature hash writes sent to the store, by kind (window, latest, accuracy, drift)",
            ["kind"],
            registry=registry,
        )
        self.flush_seconds = Histogram(
            FEATURE_FLUSH_SECONDS,
            "Time to write one flush to the feature store",
            buckets=FLUSH_BUCKETS,
            registry=registry,
        )
        self.store_errors = Counter(
            FEATURE_STORE_ERRORS, "Failed feature store flushes (retried)", registry=registry
        )
        self.store_up = Gauge(
            FEATURE_STORE_UP, "1 when the last feature store flush succeeded", registry=registry
        )
        self.dirty_windows = Gauge(
            FEATURE_DIRTY_WINDOWS,
            "Window buckets changed but not yet in the feature store (lag)",
            registry=registry,
        )
        self.join_entries = Gauge(
            JOIN_ENTRIES, "Entries held by the label join", ["table"], registry=registry
        )
        self.labels = Counter(
            LABELS_JOINED,
            "Labels by join outcome (emit, duplicate, unknown, expired)",
            ["outcome"],
            registry=registry,
        )
        version = ["model", "version"]
        self.accuracy_scored = Counter(
            ACCURACY_SCORED,
            "Events whose first prediction the join recorded (the denominator of label coverage)",
            version,
            registry=registry,
        )
        self.accuracy_confidence = Counter(
            ACCURACY_CONFIDENCE,
            "Sum of the confidence served for those events (over scored: mean confidence)",
            version,
            registry=registry,
        )
        self.accuracy_labelled = Counter(
            ACCURACY_LABELLED,
            "Labels joined to a prediction, by outcome (correct, wrong)",
            [*version, "outcome"],
            registry=registry,
        )
        self.label_delay = Histogram(
            LABEL_DELAY_SECONDS,
            "Label time minus event time of labels joined to a prediction",
            version,
            buckets=LABEL_DELAY_BUCKETS,
            registry=registry,
        )
        self.live_accuracy = Gauge(
            LIVE_ACCURACY,
            "Accuracy of the newest event-time bucket with enough labels (this worker's share)",
            version,
            registry=registry,
        )
        self.live_accuracy_labels = Gauge(
            LIVE_ACCURACY_LABELS,
            "Labels behind driftline_live_accuracy (its bucket, this worker's partitions)",
            version,
            registry=registry,
        )
        self.live_accuracy_coverage = Gauge(
            LIVE_ACCURACY_COVERAGE,
            "Labelled over scored events in the bucket of driftline_live_accuracy",
            version,
            registry=registry,
        )
        self.live_accuracy_label_delay = Gauge(
            LIVE_ACCURACY_LABEL_DELAY,
            "Mean label delay in the bucket of driftline_live_accuracy",
            version,
            registry=registry,
        )
        self.live_accuracy_estimate = Gauge(
            LIVE_ACCURACY_ESTIMATE,
            "Estimated accuracy (mean confidence, calibrated when the version allows) of the "
            "newest event-time bucket: an estimate, there before any label",
            version,
            registry=registry,
        )
        self.live_accuracy_bucket_start = Gauge(
            LIVE_ACCURACY_BUCKET_START,
            "Event-time start of the bucket a live accuracy figure is for (labels or estimate)",
            [*version, "basis"],
            registry=registry,
        )
        self.drift_score = Gauge(
            DRIFT_SCORE,
            "PSI of live against reference, per feature ('max' is the version's score)",
            ["model", "version", "feature"],
            registry=registry,
        )
        self.drift_detected = Gauge(
            DRIFT_DETECTED,
            "1 when the last evaluation drifted",
            ["model", "version"],
            registry=registry,
        )
        self.drift_samples = Gauge(
            DRIFT_SAMPLES,
            "Samples in the last drift evaluation",
            ["model", "version"],
            registry=registry,
        )


# The alerting consumer's metrics (AlertsMetrics below).
ALERTS_RAISED = "driftline_alerts_raised_total"
ALERTS_SUPPRESSED = "driftline_alerts_suppressed_total"
ALERT_ASSETS_TRACKED = "driftline_alert_assets_tracked"
WEBHOOK_DELIVERIES = "driftline_webhook_deliveries_total"
WEBHOOK_RETRIES = "driftline_webhook_retries_total"


class AlertsMetrics:
    """The alerting consumer's collectors; labels are bounded (severity, rule, reason, outcome)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.consumed = Counter(EVENTS_CONSUMED, "Records consumed", ["topic"], registry=registry)
        self.produced = Counter(EVENTS_PRODUCED, "Records produced", ["topic"], registry=registry)
        self.dead_letters = Counter(
            DEAD_LETTERS, "Records dead-lettered", ["topic", "reason"], registry=registry
        )
        self.batch_failures = Counter(
            BATCH_FAILURES,
            "Batches rewound and retried, by the stage that failed",
            ["stage"],
            registry=registry,
        )
        self.raised = Counter(
            ALERTS_RAISED,
            "Alerts raised, by severity and rule (reason: k_of_n, escalation)",
            ["severity", "reason"],
            registry=registry,
        )
        self.suppressed = Counter(
            ALERTS_SUPPRESSED,
            "Faulty windows that raised no alert (below_k, cooldown, duplicate, late)",
            ["reason"],
            registry=registry,
        )
        self.assets_tracked = Gauge(
            ALERT_ASSETS_TRACKED,
            "Assets whose recent windows the alert rule holds",
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            WEBHOOK_DELIVERIES,
            "Alert webhook deliveries: delivered, rejected (4xx), failed (retries spent), skipped",
            ["outcome"],
            registry=registry,
        )
        self.webhook_retries = Counter(
            WEBHOOK_RETRIES,
            "Webhook attempts retried after a 429, 5xx or network error",
            registry=registry,
        )
