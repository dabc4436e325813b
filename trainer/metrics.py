"""The trainer service's collectors.

Collectors are built on a registry passed in, never at import, so tests use a fresh one;
the metric names are the runtime's (services/runtime/metrics.py), one list for dashboards.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from driftline.services.runtime.metrics import (
    CHANGE_POINT_TIME,
    DEAD_LETTERS,
    EVENTS_CONSUMED,
    GATE_DECISIONS,
    GATE_SCORE,
    LABELS_BUFFERED,
    LABELS_SINCE_TRAINING,
    POST_CHANGE_EXAMPLES,
    TRAINING_BUCKETS,
    TRAINING_EXAMPLE_AGE,
    TRAINING_IN_PROGRESS,
    TRAINING_SECONDS,
    TRAININGS,
)


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
