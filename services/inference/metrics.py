"""The inference consumer's collectors.

Collectors are built on a registry passed in, never at import, so tests use a fresh one;
the metric names are the runtime's (services/runtime/metrics.py), one list for dashboards.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from driftline.services.runtime.metrics import (
    BATCH_BUCKETS,
    BATCH_FAILURES,
    BATCH_SIZE,
    CONFIDENCE,
    CONFIDENCE_BUCKETS,
    CONSUMER_LAG,
    DEAD_LETTERS,
    END_TO_END_SECONDS,
    EVENTS_CONSUMED,
    EVENTS_PRODUCED,
    INFERENCE_SECONDS,
    LATENCY_BUCKETS,
    MODEL_SWAP_SECONDS,
    MODEL_SWAPS,
    MODEL_VERSION,
    PREDICTIONS,
    BatchHistogram,
)


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
