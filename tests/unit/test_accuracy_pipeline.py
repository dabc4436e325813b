"""Live accuracy through the features pipeline: scored once per event, labels by event time."""

from __future__ import annotations

from driftline.schemas import codec
from driftline.schemas.messages import LabelledWindow
from driftline.services.features.accuracy import (
    AccuracyView,
    bucket_hash_key,
    bucket_starts,
    join_partition,
)
from driftline.services.features.reader import accuracy_lines
from driftline.services.features.store import ACCURACY_KEY
from tests.unit.test_join_pipeline import (  # noqa: F401  (join_tables: dict and disk)
    BASE,
    MODEL,
    _join_all,
    _pipeline,
    _records,
    _result,
    _run,
    _settings,
    _window,
    join_tables,
)


def test_a_replayed_result_is_scored_once_and_labels_count_by_event_time() -> None:
    s = _settings(accuracy_bucket_s=10, accuracy_min_labels=3)
    p, outbox, store = _pipeline(s)
    topics = s.kafka.topics
    old = [_window(i, BASE + i * 100) for i in range(5)]  # bucket BASE
    new = [_window(i, BASE + 60_000 + i * 100) for i in range(5, 10)]  # bucket BASE + 60 s
    results = [
        codec.encode(_result(w_i, w.event_time_ms, "healthy", 0.8))
        for w_i, w in enumerate(old + new)
    ]

    async def scenario() -> None:
        await p.on_inputs(_records(topics.sensor_windows, [codec.encode(w) for w in old + new]))
        for _ in range(2):  # the same results twice, as after a crash before the commit
            await p.on_results(_records(topics.inference_results, results), forward=True)
            await _join_all(p, outbox)
        # The new events labelled first (3 of 4 right), as the join reports labels
        # (AccuracyBook.labelled), then a backlog for the old ones.
        assert p.accuracy is not None
        for i, w in enumerate(new[:4]):
            part = join_partition(w.asset_id.encode(), s.join_partitions)
            p.accuracy.labelled((MODEL, 1), w.event_time_ms, BASE + 62_000, i < 3, part)
        newest = p.accuracy.snapshot((MODEL, 1)) if p.accuracy else None
        # The backlog as the join reports it (AccuracyBook.labelled): old events, all right.
        assert p.accuracy is not None
        for i, w in enumerate(old):
            part = join_partition(w.asset_id.encode(), s.join_partitions)
            p.accuracy.labelled((MODEL, 1), w.event_time_ms, BASE + 300_000 + i, True, part)
        assert p.accuracy is not None
        assert p.accuracy.snapshot((MODEL, 1)) == newest
        assert await p.flush(now=0.0)

    _run(scenario())
    assert p.accuracy is not None
    buckets = p.accuracy.buckets((MODEL, 1))
    assert [(c.scored, c.labelled, c.correct) for _, c in sorted(buckets.items())] == [
        (5, 5, 5),
        (5, 4, 3),
    ]
    snap = p.accuracy.snapshot((MODEL, 1))
    assert snap is not None
    assert (snap.start_ms, snap.accuracy, snap.coverage) == (BASE + 60_000, 0.75, 0.8)
    assert snap.delay_mean_ms == 1350  # labels at +62 s for events at +60.5..60.8 s
    m = p.metrics
    assert m.live_accuracy.labels(MODEL, "1")._value.get() == 0.75
    assert m.live_accuracy_estimate.labels(MODEL, "1")._value.get() == 0.8
    assert m.accuracy_scored.labels(MODEL, "1")._value.get() == 10

    index = store.hashes[ACCURACY_KEY.format(prefix="p:", model=MODEL, version=1)]
    read = {
        start: store.hashes.get(bucket_hash_key("p:", (MODEL, 1), 10_000, start), {})
        for start in bucket_starts(index, 48)
    }
    view = AccuracyView.read(index, read)
    assert view.buckets == buckets
    text = "\n".join(accuracy_lines(view))
    assert "live accuracy 75.0%" in text
    assert "coverage 80%" in text


def test_a_rebuild_from_labelled_windows_has_labels_but_no_scored_counts() -> None:
    s = _settings(accuracy_bucket_s=10, accuracy_min_labels=1)
    p, _, _ = _pipeline(s, join=False)
    windows = [
        codec.encode(
            LabelledWindow(
                event_id=f"e{i}",
                asset_id="a",
                modality="sensor",
                event_time_ms=BASE + i,
                label_time_ms=BASE + 5000,
                true_class="healthy",
                input_type="SensorWindow",
                input=b"",
                predicted_class="healthy" if i % 2 else "cracked",
                confidence=0.9,
                model_name=MODEL,
                model_version=1,
            )
        )
        for i in range(10)
    ]
    # e3 repeated, as the join emits a window again after a crash: its label counts once.
    p.on_labelled_windows(_records("t.training.windows", [*windows, windows[3]]))
    assert p.accuracy is not None
    snap = p.accuracy.snapshot((MODEL, 1))
    assert snap is not None
    assert (snap.total, snap.correct, snap.scored, snap.coverage) == (10, 5, 0, None)
    assert snap.estimate is None


def test_the_live_view_shows_the_bucket_age_and_the_estimate_apart() -> None:
    from driftline.services.demo.view import live_accuracy_text
    from driftline.services.runtime import metrics as m

    sel = (("model", MODEL), ("version", "2"))
    feats = {
        (m.LIVE_ACCURACY, sel): 0.912,
        (m.LIVE_ACCURACY_LABELS, sel): 48.0,
        (m.LIVE_ACCURACY_COVERAGE, sel): 0.48,
        (m.LIVE_ACCURACY_LABEL_DELAY, sel): 3.2,
        (m.LIVE_ACCURACY_BUCKET_START, (("basis", "labels"), *sel)): 950.0,
        (m.LIVE_ACCURACY_ESTIMATE, sel): 0.85,
        (m.LIVE_ACCURACY_BUCKET_START, (("basis", "estimate"), *sel)): 990.0,
        (m.LIVE_ACCURACY, (("model", MODEL), ("version", "1"))): 0.1,  # another version
    }
    text = live_accuracy_text(feats, MODEL, 2, 10, now_s=1000.0)
    assert text.startswith("accuracy (labels, events 40-50 s ago) 0.912, coverage 48%, delay 3 s")
    assert "estimate from confidence (events 0-10 s ago) 0.850" in text
    few = {**feats, (m.LIVE_ACCURACY_LABELS, sel): 12.0}
    assert "waiting for 30 labels" in live_accuracy_text(few, MODEL, 2, 10, now_s=1000.0)
