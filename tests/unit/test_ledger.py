"""The ledger counts lost and duplicated events and buckets accuracy by time and version."""

from __future__ import annotations

import math

from driftline.services.core.ledger import Ledger


def test_lost_duplicated_and_accuracy() -> None:
    ledger = Ledger()
    for i in range(10):
        ledger.record_sent(f"e{i}", "sensor", "healthy" if i < 5 else "cracked", t_s=float(i))
    for i in range(9):  # e9 never comes back
        ledger.record_result(f"e{i}", version=1 if i < 6 else 2, predicted="healthy")
    ledger.record_result("e3", version=1, predicted="cracked")  # a duplicate: ignored for accuracy
    ledger.record_result("other-run", version=1, predicted="healthy")
    assert ledger.lost == 1
    assert ledger.duplicated == 1
    assert ledger.unknown == 1
    acc, n = ledger.accuracy("sensor")
    assert (acc, n) == (5 / 9, 9)
    acc_late, n_late = ledger.accuracy("sensor", since_s=5)
    assert (acc_late, n_late) == (0.0, 4)
    assert math.isnan(ledger.accuracy("image")[0])
    points = ledger.series(bucket_s=5.0)
    assert [(p.t_s, p.version, p.accuracy, p.count) for p in points] == [
        (0.0, 1, 1.0, 5),
        (5.0, 1, 0.0, 1),
        (5.0, 2, 0.0, 3),
    ]


def test_series_carries_the_mean_confidence_beside_accuracy() -> None:
    ledger = Ledger()
    for i, (ok, conf) in enumerate([(True, 0.9), (False, 0.7), (True, None)]):
        ledger.record_sent(f"e{i}", "sensor", "healthy", 1.0)
        ledger.record_result(f"e{i}", 1, "healthy" if ok else "cracked", conf)
    (point,) = ledger.series(10)
    assert point.accuracy == 2 / 3
    assert point.confidence is not None
    assert abs(point.confidence - 0.8) < 1e-9
