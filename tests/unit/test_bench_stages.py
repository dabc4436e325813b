"""The latency split of bench inference: stages that add up to the whole, from batch marks."""

from __future__ import annotations

import pytest

from driftline.services.bench.stages import STAGES, BatchIndex, breakdown, describe
from driftline.services.inference.handler import Marks

T = "src"


def marks(taken: float, spans: dict[int, tuple[int, int]]) -> Marks:
    return Marks(
        taken, taken + 0.002, taken + 0.003, taken + 0.004, {(T, p): s for p, s in spans.items()}
    )


def test_a_record_belongs_to_the_first_batch_that_took_it() -> None:
    first = marks(10.0, {0: (0, 5), 1: (0, 2)})
    replay = marks(11.0, {0: (3, 8)})  # after a rewind to 3
    index = BatchIndex.of([first, replay])
    assert index.find(0, 4) is first
    assert index.find(0, 6) is replay
    assert index.find(1, 1) is first
    assert index.find(1, 2) is None
    assert index.find(2, 0) is None


def test_stages_add_up_to_the_latency_and_the_tail_is_explained() -> None:
    batches = [marks(100.0 + i, {0: (10 * i, 10 * i + 10)}) for i in range(10)]
    planned, arrived, appended, sources = {}, {}, {}, {}
    for n in range(100):
        e = f"e{n}"
        b = batches[n // 10]
        planned[e] = b.taken_s - 0.010
        # The last event waited 500 ms in fetch: it is the tail.
        sources[e] = (0, n, planned[e] + (0.001 if n < 99 else -0.490 + 0.001))
        appended[e] = b.produced_s + 0.001
        arrived[e] = appended[e] + 0.002
    out = breakdown(list(planned), planned, arrived, appended, sources, batches)
    assert out["events"] == 100
    assert set(STAGES) <= set(out)
    total = sum(out[s]["tail_mean_ms"] for s in STAGES)
    assert total == pytest.approx(out["tail_total_mean_ms"])
    assert out["score"]["p50_ms"] == pytest.approx(2.0)
    assert out["produce"]["p50_ms"] == pytest.approx(1.0)
    assert out["reader"]["p50_ms"] == pytest.approx(2.0)
    assert "fetch" in describe(out)


def test_no_matching_batch_is_reported_not_invented() -> None:
    out = breakdown(["e"], {"e": 1.0}, {"e": 2.0}, {"e": 1.5}, {"e": (0, 0, 1.1)}, [])
    assert out == {"events": 0}
    assert describe(out) == "stages: not measured"
