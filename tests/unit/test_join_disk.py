"""The join's state on disk: the RocksDB table behind the StateTable port, and the join's index.

Against real rocksdict databases in tmp_path; the dict twin must answer the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from driftline.schemas.messages import Label
from driftline.services.core import join as core
from driftline.services.features import join as j
from driftline.services.features import joinkeys as jk
from driftline.services.features import joinrecords as jr
from driftline.services.features.rocks import (
    MIB,
    OFFSET_KEY,
    DiskTable,
    LocalDatabases,
    RocksOptions,
    faust_disk_table,
    holding_changelogs,
)
from driftline.services.features.tables import KEY_SEP, DictTable, StateTable, key_partition

PARTITIONS = 4
HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_700_000_000_000


def _by_asset(key: bytes) -> int:
    return key_partition(key.split(KEY_SEP, 1)[0], PARTITIONS)


@pytest.fixture
def options() -> RocksOptions:
    return RocksOptions(8 * MIB)


# tmp_path and options: requested so that the databases are closed before either goes (marks
# cannot apply to fixtures, so no usefixtures here).
@pytest.fixture
def opened(
    tmp_path: Path,  # noqa: ARG001
    options: RocksOptions,  # noqa: ARG001
) -> Iterator[list[LocalDatabases]]:
    dbs: list[LocalDatabases] = []
    yield dbs
    for d in dbs:
        d.close()


def _disk(
    tmp_path: Path, options: RocksOptions, opened: list[LocalDatabases], name: str, **kw: object
) -> DiskTable:
    dbs = LocalDatabases(tmp_path / name, options)
    opened.append(dbs)
    return DiskTable(dbs, PARTITIONS, **kw)  # type: ignore[arg-type]


# ---- the table --------------------------------------------------------------------------------


def test_the_disk_table_and_its_dict_twin_answer_alike(
    tmp_path: Path, options: RocksOptions, opened: list[LocalDatabases]
) -> None:
    twins: list[StateTable] = [DictTable(), _disk(tmp_path, options, opened, "t")]
    keys = [f"asset-{i % 5}\x1f{i:03d}".encode() for i in range(40)]
    for table in twins:
        for i, key in enumerate(keys):
            table.put(i % PARTITIONS, key, b"v%d" % i)
        table.delete(3 % PARTITIONS, keys[3])
        table.delete(None, keys[5])  # without its partition: found where it lives
        table.delete(None, b"never-written")
        table.put(7 % PARTITIONS, keys[7], b"again")  # a key stays in its partition
    answers = []
    for table in twins:
        answers.append(
            (
                table.get(keys[7]),
                table.get(keys[3]),
                table.get(keys[5]),
                sorted(table.items()),
                list(table.scan(b"asset-1", b"asset-3")),
                list(table.scan(b"asset-1", b"asset-3", reverse=True)),
                list(table.scan(b"asset-2\x1f", b"asset-2\x1f020")),
            )
        )
    assert answers[0] == answers[1]
    got, gone, gone_too, items, forward, backward, bounded = answers[1]
    assert (got, gone, gone_too) == (b"again", None, None)
    assert len(items) == 38
    assert [k for k, _ in forward] == sorted(k for k in keys if b"asset-1" <= k < b"asset-3")
    assert backward == forward[::-1]
    assert [k[-3:] for k, _ in bounded] == [b"002", b"007", b"012", b"017"]


def test_the_disk_table_holds_nothing_in_python_and_keeps_its_keys_across_a_reopen(
    tmp_path: Path, options: RocksOptions
) -> None:
    dbs = LocalDatabases(tmp_path / "t", options)
    table = DiskTable(dbs, PARTITIONS, partition_of=_by_asset)
    for i in range(5_000):
        table.put(None, f"a{i % 50}\x1f{i}".encode(), b"x" * 20)
    dbs.db(0).put(OFFSET_KEY, b"17")  # faust's offset key is not state
    fields = {"dbs", "partitions", "changelog", "partition_of", "_holding", "_held"}
    assert vars(table).keys() == fields
    assert table._held == {}  # changelog records wait only within a hold
    items = table.items()
    assert not isinstance(items, list), "items are read lazily from disk"
    dbs.close()
    again = DiskTable(LocalDatabases(tmp_path / "t", options), PARTITIONS, partition_of=_by_asset)
    assert again.get(b"a7\x1f1207") == b"x" * 20
    assert sum(1 for _ in again.items()) == 5_000
    assert OFFSET_KEY not in dict(again.items())
    assert 4_000 < len(again) < 6_000  # RocksDB's estimate
    # Each key went to its asset's partition's database.
    for slot, db in again.dbs.held().items():
        assert all(_by_asset(k) == slot for k in db.keys() if k != OFFSET_KEY)  # noqa: SIM118
    assert isinstance(again.dbs, LocalDatabases)
    again.dbs.close()


def test_every_change_goes_to_the_changelog_of_its_partition(
    tmp_path: Path, options: RocksOptions, opened: list[LocalDatabases]
) -> None:
    sent: list[tuple[int, bytes, bytes | None]] = []
    table = _disk(
        tmp_path,
        options,
        opened,
        "t",
        partition_of=_by_asset,
        changelog=lambda p, k, v: sent.append((p, k, v)),
    )
    table.put(None, b"a1\x1fe1", b"s1")
    table.put(3, b"idx", b"\x01")
    table.delete(None, b"a1\x1fe1")
    table.delete(3, b"idx")
    table.delete(3, b"idx")  # gone already: no second tombstone
    slot = _by_asset(b"a1\x1fe1")
    assert sent == [
        (slot, b"a1\x1fe1", b"s1"),
        (3, b"idx", b"\x01"),
        (slot, b"a1\x1fe1", None),
        (3, b"idx", None),
    ]


def test_within_a_hold_a_key_sends_only_its_last_value_when_the_outermost_hold_ends(
    tmp_path: Path, options: RocksOptions, opened: list[LocalDatabases]
) -> None:
    sent: list[tuple[int, bytes, bytes | None]] = []
    table = _disk(
        tmp_path,
        options,
        opened,
        "t",
        partition_of=_by_asset,
        changelog=lambda p, k, v: sent.append((p, k, v)),
    )
    other = _disk(tmp_path, options, opened, "u", changelog=lambda p, k, v: sent.append((p, k, v)))
    slot = _by_asset(b"a1\x1fe1")
    with holding_changelogs([table, other, DictTable()]):
        table.put(None, b"a1\x1fe1", b"input")
        with table.holding_changelog():  # nested: a timer between two awaits of a batch
            table.put(None, b"a1\x1fe1", b"result")
        assert sent == []
        assert table.get(b"a1\x1fe1") == b"result"  # the database is written at once
        table.put(2, b"bucket", b"1")
        table.put(2, b"bucket", b"2")
        table.put(3, b"gone", b"x")
        table.delete(3, b"gone")
        other.put(1, b"k", b"v")
    assert sorted(sent, key=repr) == sorted(
        [(slot, b"a1\x1fe1", b"result"), (2, b"bucket", b"2"), (3, b"gone", None), (1, b"k", b"v")],
        key=repr,
    )
    table.put(2, b"bucket", b"3")  # outside a hold: sent at once
    assert sent[-1] == (2, b"bucket", b"3")


def test_a_faust_rocksdb_table_is_written_to_its_partition_databases(tmp_path: Path) -> None:
    import faust

    app = faust.App(
        "t-disk", store="rocksdb://", datadir=str(tmp_path / "faust"), autodiscover=False
    )
    table = app.Table("join-events", key_type=bytes, value_type=bytes, partitions=PARTITIONS)
    sent: list[tuple[int, bytes, bytes | None]] = []

    def send_changelog(partition: int, key: bytes, value: bytes | None, **_kw: object) -> None:
        sent.append((partition, key, value))

    table.send_changelog = send_changelog
    options = RocksOptions(8 * MIB)
    disk = faust_disk_table(table, options, partition_of=_by_asset)
    disk.put(None, b"a1\x1fe1", b"s1")
    assert table.data.rocksdb_options is options
    slot = _by_asset(b"a1\x1fe1")
    assert table.data._db_for_partition(slot).get(b"a1\x1fe1") == b"s1"
    assert disk.get(b"a1\x1fe1") == b"s1"
    disk.delete(None, b"a1\x1fe1")
    assert sent == [(slot, b"a1\x1fe1", b"s1"), (slot, b"a1\x1fe1", None)]
    assert table.data._db_for_partition(slot).get(b"a1\x1fe1") is None
    table.data._dbs.clear()


# ---- the join on its disk tables --------------------------------------------------------------


REF = core.InputRef("sensor.windows", 0, 0, "SensorWindow", "sensor")
P1 = core.Prediction("m", 1, "healthy", 0.9, scored_time_ms=0)


def _input(asset: str, event_id: str, t: int) -> bytes:
    ref = msgspec.structs.replace(REF, offset=int(t % 1_000_000))
    return msgspec.msgpack.encode(jr.InputNote(event_id, asset, t, ref))


def _result(asset: str, event_id: str, t: int) -> bytes:
    return msgspec.msgpack.encode(jr.ResultNote(event_id, asset, t, P1))


def _record(label: Label, offset: int) -> jr.LabelRecord:
    from driftline.schemas import codec

    value = codec.encode(label)
    return jr.LabelRecord(
        label.asset_id.encode() if label.asset_id else None, label, value, [], ("l", 0, offset)
    )


def _join(
    tmp_path: Path, options: RocksOptions, opened: list[LocalDatabases], **kw: object
) -> j.JoinProcessor:
    states = _disk(tmp_path, options, opened, "states", partition_of=_by_asset)
    parked = _disk(tmp_path, options, opened, "parked", partition_of=_by_asset)
    index = _disk(tmp_path, options, opened, "index")
    settings: dict[str, object] = {
        "partitions": PARTITIONS,
        "retention_ms": 2 * DAY,
        "grace_ms": 0,
        "label_wait_ms": 0,
    }
    settings.update(kw)
    return j.JoinProcessor(states, parked, index, **settings)  # type: ignore[arg-type]


def _index_keys(join: j.JoinProcessor, space: bytes) -> list[bytes]:
    return [k for k, _ in join.index.scan(space, bytes([space[0] + 1]))]


def test_an_inspection_finds_its_assets_events_of_its_interval_on_disk(
    tmp_path: Path, options: RocksOptions, opened: list[LocalDatabases]
) -> None:
    join = _join(tmp_path, options, opened)
    # Asset ids that prefix each other must not see each other's events.
    for asset in ("a1", "a10", "a1-x"):
        for i in range(10):
            t = T0 + i * 60_000
            join.on_input(_input(asset, f"{asset}-e{i}", t))
            join.on_result(_result(asset, f"{asset}-e{i}", t))
    join.on_input(_input("a1", "late", T0 + 20 * 60_000))  # moves the watermark past them
    inspection = Label(
        asset_id="a1",
        true_class="cracked",
        source="inspection",
        label_time_ms=T0 + 9 * 60_000,
        inspection_time_ms=T0 + 6 * 60_000,
        lookback_ms=3 * 60_000,
    )
    outcome = join.on_label(_record(inspection, 1))
    assert outcome.decision is core.Decision.EMIT
    assert [e.state.event_id for e in outcome.emits] == [f"a1-e{i}" for i in (3, 4, 5, 6)]


def test_eviction_deletes_old_events_and_their_index_entries_a_batch_at_a_time(
    tmp_path: Path, options: RocksOptions, opened: list[LocalDatabases]
) -> None:
    join = _join(tmp_path, options, opened, retention_ms=HOUR)
    for i in range(30):
        t = T0 + i * 10 * 60_000  # every 10 minutes for 5 hours
        join.on_input(_input(f"a{i % 3}", f"e{i}", t))
    newest = T0 + 29 * 10 * 60_000
    old = [f"e{i}" for i in range(30) if T0 + i * 10 * 60_000 < newest - HOUR]
    assert join.evict(limit=10) == 10  # one bounded pass...
    assert join.evict() == len(old) - 10  # ...and the rest next time
    assert join.evict() == 0
    held = sorted(core.decode_state(v).event_id for _, v in join.states.items())
    assert held == sorted(f"e{i}" for i in range(30) if f"e{i}" not in old)
    assert len(_index_keys(join, jk.INDEX_BY_TIME)) == len(held)
    assert len(_index_keys(join, jk.INDEX_BY_ASSET)) == len(held)
    # A replay of an evicted event is dropped, not indexed again below the evicted range.
    join.on_input(_input("a0", "e0", T0))
    assert join.states.get(jk.event_key("a0", "e0")) is None


def test_a_waiting_label_is_kept_on_disk_and_decided_once_its_wait_runs_out(
    tmp_path: Path, options: RocksOptions, opened: list[LocalDatabases]
) -> None:
    join = _join(tmp_path, options, opened, label_wait_ms=10 * 60_000)
    join.on_input(_input("a1", "e1", T0))
    label = Label(
        event_id="ghost", asset_id="a1", true_class="healthy", source="x", label_time_ms=T0
    )
    assert join.on_label(_record(label, 7)).decision is core.Decision.WAIT
    assert len(_index_keys(join, jk.INDEX_DUE)) == 1
    assert join.due() == []  # the inputs have not passed it yet
    join.on_input(_input("a1", "e2", T0 + 11 * 60_000))
    (outcome,) = join.due()
    assert outcome.decision is core.Decision.UNKNOWN
    assert len(_index_keys(join, jk.INDEX_DUE)) == 1  # waiting till its dead letter is sent
    join.settled(outcome)
    assert _index_keys(join, jk.INDEX_DUE) == []
    assert join.parked.get(jk.event_key("a1", "ghost")) is None
    # A waiting label its event then completes leaves no due entry behind.
    early = Label(event_id="e3", asset_id="a1", true_class="healthy", source="x", label_time_ms=T0)
    join.label_wait_ms = HOUR
    assert join.on_label(_record(early, 8)).decision is core.Decision.WAIT
    join.on_input(_input("a1", "e3", T0 + 12 * 60_000))
    (settled,) = join.on_result(_result("a1", "e3", T0 + 12 * 60_000))
    assert settled.decision is core.Decision.EMIT
    join.settled(settled)
    assert _index_keys(join, jk.INDEX_DUE) == []


def test_a_restored_join_takes_its_watermark_from_the_index_and_indexes_old_tables_once(
    tmp_path: Path, options: RocksOptions, opened: list[LocalDatabases]
) -> None:
    join = _join(tmp_path, options, opened)
    for i in range(6):
        join.on_input(_input(f"a{i % 2}", f"e{i}", T0 + i * 1000))
    again = j.JoinProcessor(
        join.states, join.parked, join.index, partitions=PARTITIONS, retention_ms=DAY,
        grace_ms=0, label_wait_ms=0,
    )  # fmt: skip
    again.restore()
    assert again.watermark_ms == T0 + 5000
    # Tables recovered from before the index existed: states only.
    states = DictTable()
    for key, value in join.states.items():
        states.put(None, key, value)
    old = j.JoinProcessor(
        states, DictTable(), DictTable(), partitions=PARTITIONS, retention_ms=DAY,
        grace_ms=0, label_wait_ms=0,
    )  # fmt: skip
    old.restore()
    assert old.watermark_ms == T0 + 5000
    assert _index_keys(old, jk.INDEX_BY_TIME) == _index_keys(join, jk.INDEX_BY_TIME)
    assert _index_keys(old, jk.INDEX_BY_ASSET) == _index_keys(join, jk.INDEX_BY_ASSET)


def test_sensor_inputs_awaiting_their_prediction_are_held_up_to_a_bound(
    tmp_path: Path, options: RocksOptions, opened: list[LocalDatabases]
) -> None:
    pairs: list[str] = []
    join = _join(
        tmp_path, options, opened, max_unpaired=100, on_pair=lambda _p, s: pairs.append(s.event_id)
    )
    for i in range(1_000):
        join.on_input(_input("a1", f"e{i}", T0 + i))
    assert len(join._unpaired) == 100
    join.on_result(_result("a1", "e999", T0 + 999))
    join.on_result(_result("a1", "e0", T0))  # the oldest went without its drift pair
    assert pairs == ["e999"]
    assert not join._claimed


def test_a_second_worker_of_the_same_role_on_one_data_dir_stops_at_once(tmp_path: Path) -> None:
    from driftline.services.features.app import lock_data_dir
    from driftline.services.features.settings import FeaturesSettings

    def settings(role: str) -> FeaturesSettings:
        return FeaturesSettings(data_dir=str(tmp_path), role=role)  # type: ignore[arg-type]

    first = lock_data_dir(settings("join"))
    stats = lock_data_dir(settings("stats"))  # other tables: no conflict
    with pytest.raises(RuntimeError, match="DRIFTLINE_DATA_DIR"):
        lock_data_dir(settings("join"))
    with pytest.raises(RuntimeError, match="in use"):
        lock_data_dir(settings("all"))
    for handle in [*first, *stats]:
        handle.close()
    for handle in lock_data_dir(settings("all")):  # free again once the first one is gone
        handle.close()
