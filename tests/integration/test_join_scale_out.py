"""Two join workers share the label join by asset: every label yields exactly one window."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from driftline.schemas import codec
from driftline.schemas.contracts import INSULATOR_CLASSES
from driftline.schemas.messages import Label, LabelledWindow
from driftline.services.runtime.settings import KafkaSettings
from tests.integration.kafka_io import drain
from tests.integration.test_features import (  # noqa: F401  (fixtures)
    MINUTE,
    FeaturesProcess,
    base_minute,
    key_prefix,
    produce_labels,
    produce_results,
    produce_windows,
    rds,
    result_for,
    sensor_windows,
    start_app,
)


@pytest.mark.usefixtures("rds")
def test_two_join_workers_emit_each_labelled_event_exactly_once(
    kafka: KafkaSettings,
    start_app: Callable[..., FeaturesProcess],  # noqa: F811
    tmp_path: Path,
) -> None:
    t0 = base_minute()
    windows = sensor_windows(240, t0, seed=11, assets=12, step_ms=500)
    results = [result_for(w, INSULATOR_CLASSES[i % 4], 0.8) for i, w in enumerate(windows)]
    workers = [
        start_app(role="join", label_wait_s="0", data_dir=str(tmp_path / f"w{n}")) for n in range(2)
    ]
    produce_windows(kafka, windows)
    produce_results(kafka, results)
    join_topic = f"{kafka.topic_prefix}driftline-features-join"

    def joined() -> float:
        return sum(w.metric("driftline_events_consumed_total", topic=join_topic) for w in workers)

    workers[0].wait(lambda: joined() >= 2 * len(windows), 90, "inputs and results in the join")
    at = windows[-1].event_time_ms + MINUTE
    # Per-event labels for the first 150 events, each sent twice (a replay), and one inspection
    # of asset 0 over the whole run: it labels that asset's events not labelled per event.
    labels = [
        Label(
            event_id=w.event_id,
            asset_id=w.asset_id,
            true_class="healthy",
            source="field",
            label_time_ms=at,
        )
        for w in windows[:150]
    ]
    newest = windows[-1].event_time_ms
    inspection = Label(
        asset_id=windows[0].asset_id,
        true_class="cracked",
        source="inspection",
        label_time_ms=at + 1,
        inspection_time_ms=newest,
        lookback_ms=newest - t0,
    )
    produce_labels(kafka, [*labels, *labels])
    produce_labels(kafka, [inspection])
    # The fleet goes on sending: each worker's inputs pass the labels' time, so the
    # inspection (which waits for every event of its interval) is decided.
    tail = sensor_windows(12, at + MINUTE, seed=12, assets=12)
    produce_windows(kafka, tail)
    produce_results(kafka, [result_for(w, "healthy", 0.8) for w in tail])
    covered = [w for w in windows[150:] if w.asset_id == windows[0].asset_id]
    expected = {w.event_id: "healthy" for w in windows[:150]}
    expected |= {w.event_id: "cracked" for w in covered}

    # drain reads on past the expected count, so a duplicate would show.
    emitted = drain(kafka, kafka.topics.training_windows, expect=len(expected), timeout_s=60)
    got = [codec.decode(LabelledWindow, m.value()) for m in emitted]
    assert sorted(w.event_id for w in got) == sorted(expected), "each labelled event once"
    assert {w.event_id: w.true_class for w in got} == expected
    produced = [
        w.metric("driftline_events_produced_total", topic=kafka.topics.training_windows)
        for w in workers
    ]
    assert all(n > 0 for n in produced), f"both workers joined some assets: {produced}"
