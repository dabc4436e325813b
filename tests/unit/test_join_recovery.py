"""The join after a crash, when its tables come back from their changelogs at different points:
the replay from the committed offset still counts each event once in live accuracy (the book
is recounted from the join's states on recovery), and a label left waiting for an event that
came back complete is joined at the recovery, not after its whole wait."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry
from typing_extensions import override

from driftline.schemas import codec
from driftline.schemas.contracts import INSULATOR_CLASSES
from driftline.services.core.accuracy import BucketCounts
from driftline.services.features.accuracy import AccuracyBook, Owner
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.pipeline import FeaturesPipeline, PipelineTables
from driftline.services.features.readback import FetchedRecord, MemoryInputReader, Position
from driftline.services.features.records import RawRecord
from driftline.services.features.store import MemoryFeatureStore
from driftline.services.features.tables import DictTable
from tests.unit.test_join_pipeline import (
    BASE,
    ListOutbox,
    _inputs,
    _label,
    _records,
    _result,
    _run,
    _settings,
    _window,
    _windows_out,
)

EVENTS = 30
TABLES = ("accuracy", "states", "parked", "index")


def _tables(copied: dict[str, DictTable] | None = None) -> dict[str, DictTable]:
    """The join's and the book's tables: new, or copies of the given ones."""
    out = {}
    for name in TABLES:
        table = DictTable()
        if copied is not None:
            table.data = dict(copied[name].data)
        out[name] = table
    return out


def _worker(
    tables: dict[str, DictTable], outbox: ListOutbox, reader: MemoryInputReader
) -> FeaturesPipeline:
    settings = _settings(accuracy_bucket_s=10, label_wait_s=0)
    return FeaturesPipeline(
        settings,
        FeaturesMetrics(CollectorRegistry()),
        MemoryFeatureStore(),
        outbox,
        PipelineTables(stats=DictTable(), **tables),
        reader=reader,
    )


def _book(p: FeaturesPipeline) -> dict[Owner, dict[int, BucketCounts]]:
    assert isinstance(p.accuracy, AccuracyBook)
    return {owner: dict(s.buckets) for owner, s in p.accuracy.states.items()}


def _join_records() -> tuple[list[RawRecord], ListOutbox, MemoryInputReader]:
    """The join topic as the forwarders write it: inputs, results, then labels for 2 of 3."""
    outbox, reader = ListOutbox(), MemoryInputReader()
    p = _worker(_tables(), outbox, reader)
    topics = p.settings.kafka.topics
    windows = [_window(i, BASE + i * 1000) for i in range(EVENTS)]
    results = [
        codec.encode(_result(i, w.event_time_ms, INSULATOR_CLASSES[i % 2], 0.5 + i / 100))
        for i, w in enumerate(windows)
    ]
    labels = [
        _label(f"e{i}", INSULATOR_CLASSES[i % 4 // 2], BASE + 40_000 + i)
        for i in range(EVENTS)
        if i % 3
    ]

    async def forward() -> None:
        await _inputs(p, _records(topics.sensor_windows, [codec.encode(w) for w in windows]))
        await p.on_results(_records(topics.inference_results, results), forward=True)
        await p.on_labels(_records(topics.feedback_labels, labels))

    _run(forward())
    return outbox.take(p.join_topic), outbox, reader


@pytest.mark.parametrize("cut", [EVENTS + 7, 2 * EVENTS + 5], ids=["in-results", "in-labels"])
@pytest.mark.parametrize("behind", ["accuracy", "join"])
def test_a_crash_between_the_tables_counts_each_event_once_after_the_replay(
    cut: int, behind: str
) -> None:
    records, outbox, reader = _join_records()
    first = _worker(_tables(), outbox, reader)

    async def run() -> FeaturesPipeline:
        # Committed up to `cut`: the tables as of then, and as the crash left them.
        await first.on_join(records[:cut])
        committed = _tables(_first_tables(first))
        await first.on_join(records[cut:])
        crashed = _tables(_first_tables(first))
        # One table's changelog came back as of the commit, the other's with every write.
        lagging = ("accuracy",) if behind == "accuracy" else ("states", "parked", "index")
        restored = {n: committed[n] if n in lagging else crashed[n] for n in TABLES}
        second = _worker(_tables(restored), outbox, reader)
        await second.on_join_recovered()
        await second.on_join(records[cut:])  # Kafka redelivers from the committed offset
        return second

    second = _run(run())
    assert isinstance(second, FeaturesPipeline)
    want = _book(first)
    assert sum(c.scored for b in want.values() for c in b.values()) == EVENTS
    assert sum(c.labelled for b in want.values() for c in b.values()) == 20
    assert _book(second) == want


def _first_tables(p: FeaturesPipeline) -> dict[str, DictTable]:
    assert p.join is not None
    assert p.accuracy is not None
    found = {
        "accuracy": p.accuracy.table,
        "states": p.join.states,
        "parked": p.join.parked,
        "index": p.join.index,
    }
    assert all(isinstance(t, DictTable) for t in found.values())
    return found  # type: ignore[return-value]


def test_a_window_joined_before_its_prediction_stays_uncounted_after_a_recovery() -> None:
    outbox, reader = ListOutbox(), MemoryInputReader()
    first = _worker(_tables(), outbox, reader)
    topics = first.settings.kafka.topics
    window = _window(0, BASE)
    result = codec.encode(_result(0, BASE, "healthy", 0.9))

    async def run() -> FeaturesPipeline:
        await _inputs(first, _records(topics.sensor_windows, [codec.encode(window)]))
        await first.on_labels(_records(topics.feedback_labels, [_label("e0", "healthy", BASE - 1)]))
        await first.on_join(outbox.take(first.join_topic))  # emitted without a prediction
        await first.on_results(_records(topics.inference_results, [result]), forward=True)
        await first.on_join(outbox.take(first.join_topic))
        second = _worker(_tables(_first_tables(first)), outbox, reader)
        await second.on_join_recovered()
        return second

    second = _run(run())
    assert isinstance(second, FeaturesPipeline)
    (counts,) = [c for b in _book(first).values() for c in b.values()]
    assert (counts.scored, counts.labelled) == (1, 0)  # as a rebuild counts that window
    assert _book(second) == _book(first)


def test_a_label_left_waiting_for_an_event_that_came_back_complete_is_joined_on_recovery() -> None:
    outbox, reader = ListOutbox(), MemoryInputReader()
    events = _worker(_tables(), outbox, reader)  # saw the input and the result only
    waiting = _worker(_tables(), outbox, reader)  # saw the label only, before its event
    topics = events.settings.kafka.topics
    window = _window(0, BASE)
    result = codec.encode(_result(0, BASE, "healthy", 0.9))

    async def run() -> FeaturesPipeline:
        await waiting.on_labels(_records(topics.feedback_labels, [_label("e0", "healthy", BASE)]))
        await waiting.on_join(outbox.take(waiting.join_topic))
        await _inputs(events, _records(topics.sensor_windows, [codec.encode(window)]))
        await events.on_results(_records(topics.inference_results, [result]), forward=True)
        await events.on_join(outbox.take(events.join_topic))
        # The event's state came back complete, the label still waiting: the crash came
        # between the two, and the replay (past both) has nothing that would retry the label.
        tables = _tables(_first_tables(events))
        tables["parked"] = _tables(_first_tables(waiting))["parked"]
        tables["index"].data.update(_first_tables(waiting)["index"].data)
        restarted = _worker(tables, outbox, reader)
        await restarted.on_join_recovered()
        return restarted

    restarted = _run(run())
    assert isinstance(restarted, FeaturesPipeline)
    assert [w.event_id for w in _windows_out(outbox, topics.training_windows)] == ["e0"]
    assert restarted.join is not None
    assert len(restarted.join.parked) == 0
    (counts,) = [c for b in _book(restarted).values() for c in b.values()]
    assert (counts.scored, counts.labelled, counts.correct) == (1, 1, 1)


class Killed(Exception):
    """The worker dies here (kill -9): nothing after this point happens."""


class KilledReading(MemoryInputReader):
    @override
    async def read(self, positions: Sequence[Position]) -> dict[Position, FetchedRecord]:
        raise Killed


def test_a_label_settled_by_its_event_stays_waiting_until_its_window_is_out() -> None:
    outbox, reader = ListOutbox(), MemoryInputReader()
    first = _worker(_tables(), outbox, reader)
    topics = first.settings.kafka.topics
    result = codec.encode(_result(0, BASE, "healthy", 0.9))

    async def run() -> FeaturesPipeline:
        await first.on_labels(_records(topics.feedback_labels, [_label("e0", "healthy", BASE)]))
        await first.on_join(outbox.take(first.join_topic))  # waits for its event
        await _inputs(first, _records(topics.sensor_windows, [codec.encode(_window(0, BASE))]))
        await first.on_results(_records(topics.inference_results, [result]), forward=True)
        first.joining.reader = KilledReading()
        with pytest.raises(Killed):  # killed reading the input back, before the window
            await first.on_join(outbox.take(first.join_topic))
        # The replay of the input and the result changes nothing in the states; the label,
        # still waiting, is decided again at the recovery.
        restarted = _worker(_tables(_first_tables(first)), outbox, reader)
        await restarted.on_join_recovered()
        return restarted

    restarted = _run(run())
    assert isinstance(restarted, FeaturesPipeline)
    assert [w.event_id for w in _windows_out(outbox, topics.training_windows)] == ["e0"]
    assert restarted.join is not None
    assert len(restarted.join.parked) == 0
