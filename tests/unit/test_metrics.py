"""The batched histogram exposes the same buckets prometheus-client's Histogram would."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from driftline.services.runtime.metrics import BatchHistogram


def test_batch_histogram_matches_the_reference_histogram() -> None:
    buckets = (0.1, 0.5, 1.0, 5.0)
    values = np.array([0.05, 0.1, 0.3, 0.5, 0.7, 1.0, 2.0, 9.0, 0.5])
    ours_reg, ref_reg = CollectorRegistry(), CollectorRegistry()
    ours = BatchHistogram("x_seconds", "doc", ["m"], buckets, ours_reg)
    ref = Histogram("x_seconds", "doc", ["m"], buckets=buckets, registry=ref_reg)
    ours.observe_many(("a",), values[:4])
    ours.observe_many(("a",), values[4:])
    for v in values.tolist():
        ref.labels("a").observe(v)
    for name in ("x_seconds_bucket", "x_seconds_count", "x_seconds_sum"):
        for le in ("0.1", "0.5", "1.0", "5.0", "+Inf"):
            labels = {"m": "a", "le": le} if name.endswith("bucket") else {"m": "a"}
            want = ref_reg.get_sample_value(name, labels)
            assert ours_reg.get_sample_value(name, labels) == pytest.approx(want), (name, le)
    assert b'x_seconds_bucket{le="+Inf",m="a"} 9.0' in generate_latest(ours_reg)
