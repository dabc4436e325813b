"""The features app's collectors.

Collectors are built on a registry passed in, never at import, so tests use a fresh one;
the metric names are the runtime's (services/runtime/metrics.py), one list for dashboards.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from driftline.services.runtime.metrics import (
    ACCURACY_CONFIDENCE,
    ACCURACY_LABELLED,
    ACCURACY_SCORED,
    BATCH_FAILURES,
    DEAD_LETTERS,
    DRIFT_DETECTED,
    DRIFT_SAMPLES,
    DRIFT_SCORE,
    EVENTS_CONSUMED,
    EVENTS_PRODUCED,
    FEATURE_DIRTY_WINDOWS,
    FEATURE_EVENTS,
    FEATURE_FLUSH_SECONDS,
    FEATURE_STORE_ERRORS,
    FEATURE_STORE_UP,
    FEATURE_WRITES,
    FLUSH_BUCKETS,
    JOIN_ENTRIES,
    LABEL_DELAY_BUCKETS,
    LABEL_DELAY_SECONDS,
    LABELS_JOINED,
    LIVE_ACCURACY,
    LIVE_ACCURACY_BUCKET_START,
    LIVE_ACCURACY_COVERAGE,
    LIVE_ACCURACY_ESTIMATE,
    LIVE_ACCURACY_LABEL_DELAY,
    LIVE_ACCURACY_LABELS,
)


class FeaturesMetrics:
    """The features app's collectors; labels are bounded (topic, outcome, model, version...)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.consumed = Counter(EVENTS_CONSUMED, "Records consumed", ["topic"], registry=registry)
        self.produced = Counter(EVENTS_PRODUCED, "Records produced", ["topic"], registry=registry)
        self.batch_failures = Counter(  # the join router's batches (features/router.py)
            BATCH_FAILURES,
            "Batches rewound and retried, by the stage that failed",
            ["stage"],
            registry=registry,
        )
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
