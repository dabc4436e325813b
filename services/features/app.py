"""The faust app: `create_app(settings)` wires topics, tables, agents and timers to the pipeline.

Agents are shims: they take batches of events, turn them into RawRecords and await the
pipeline. Topics on our side of the contract carry Avro bytes, so every topic here is raw
bytes in and out (decoded with schemas.codec). faust declares only its own topics: the
join topic `<prefix><app_id>-join` (keyed by asset id) and the tables' changelogs
`<prefix><app_id>-<table>-changelog` (the broker's auto-creation is off), with
`join_partitions` partitions, except the stats changelog, which has as many as
inference.results so it stays co-partitioned with it. They are replicated as `driftline topics
create` replicates the others (`replication`: 3 replicas and min.insync.replicas 2 on three
brokers or more, DRIFTLINE_KAFKA__REPLICATION_FACTOR / __MIN_INSYNC_REPLICAS to override).

Tables (all in the faust store, each with its compacted changelog):
  stats        window buckets per asset and model version (key asset|model|version|bucket)
  join-events  per event: where its input lies, the prediction served, the label joined
               (key asset \x1f event id, partitioned by asset), evicted by event time
  join-labels  labels waiting for their events (a backlog can deliver a label first)
  join-index   the two above in time order: by asset and event time, by event time, waiting
               labels by label time (services.features.join), partitioned by asset
  accuracy     live accuracy, written per join partition (one writer per changelog key)

The store is RocksDB by default (`table_store`): one database per table and changelog partition
under the worker's data dir, written through services.features.rocks, with one bounded cache
for all of them, so the join's state is on disk and its memory does not grow with it. A worker
restarted on the same data dir reads only the changelog written since (faust keeps each
database's changelog offset); on a fresh one it reads the changelogs from the start.

The join scales out: any number of `--role join` workers share the join topic's partitions
(by asset), each recovering only the changelog partitions of its own (no standby replicas,
so no worker holds another's state). Inputs are read back from Kafka by offset when labelled
(services.features.readback), so the join holds no payloads.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import faust
from confluent_kafka.admin import AdminClient

from driftline.schemas import headers as h
from driftline.schemas.messages import ModelVersion
from driftline.services.features import faustfix
from driftline.services.features.accuracy import Version
from driftline.services.features.credentials import faust_credentials
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.pipeline import FeaturesPipeline, PipelineTables
from driftline.services.features.readback import KafkaInputReader
from driftline.services.features.records import RawRecord
from driftline.services.features.rocks import (
    MIB,
    RocksOptions,
    faust_disk_table,
    holding_changelogs,
)
from driftline.services.features.settings import FeaturesSettings
from driftline.services.features.store import FeatureStore, RedisFeatureStore
from driftline.services.features.tables import KEY_SEP, FaustTable, StateTable, key_partition
from driftline.services.runtime.kafka import replication_plan
from driftline.services.runtime.registry import RegistryFollower

log = logging.getLogger(__name__)

PartitionOf = Callable[[bytes], int]

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


class TopicOutbox:
    """Sends through faust topics: inside an agent, faust attaches the record to the event
    being processed and publishes it before that event's offset is committed."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._topics: dict[str, Any] = {}

    def declare(self, name: str, **options: Any) -> Any:
        topic = self.app.topic(name, **RAW, **options)
        self._topics[name] = topic
        return topic

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: h.HeaderList,
        *,
        wait: bool = False,
    ) -> None:
        target = self._topics.get(topic)
        if target is None:
            target = self.declare(topic)
        if wait:
            # force: publish now rather than at the source's commit, and wait for the ack.
            sent = await target.send(key=key, value=value, headers=list(headers), force=True)
            await sent
        else:
            await target.send(key=key, value=value, headers=list(headers))


def broker_urls(bootstrap_servers: str) -> list[str]:
    return [f"kafka://{server.strip()}" for server in bootstrap_servers.split(",") if server]


def replication(settings: FeaturesSettings) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) of the app's own topics: what `driftline
    topics create` gives every other topic on this cluster (runtime.kafka.replication_plan;
    3 and 2 on three brokers or more, DRIFTLINE_KAFKA__REPLICATION_FACTOR and
    DRIFTLINE_KAFKA__MIN_INSYNC_REPLICAS override it)."""
    client = AdminClient(settings.kafka.client_config())
    brokers = len(client.list_topics(timeout=settings.registry_timeout_s).brokers)
    return replication_plan(settings.kafka, brokers)


def topic_partitions(settings: FeaturesSettings, topic: str) -> int:
    """Partitions of an existing topic (the stats changelog must match inference.results)."""
    client = AdminClient(settings.kafka.client_config())
    meta = client.list_topics(topic, timeout=settings.registry_timeout_s)
    found = meta.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise RuntimeError(f"topic {topic!r} not found; run `driftline topics create` first")
    return len(found.partitions)


def records(events: Sequence[Any]) -> list[RawRecord]:
    out = []
    for ev in events:
        msg = ev.message
        headers = ev.headers
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        out.append(RawRecord(msg.topic, msg.partition, msg.offset, msg.key, msg.value, items))
    return out


def data_path(settings: FeaturesSettings) -> Path:
    """The worker's faust data dir: its tables' databases live there (with rocksdb://)."""
    return Path(settings.data_dir) / settings.faust_app_id


def lock_data_dir(settings: FeaturesSettings) -> list[IO[bytes]]:
    """Hold this worker's tables in its data dir for as long as the handles stay open.

    A RocksDB database takes one process: a second worker of the same role on the same dir
    would wait on the first one's locks, then fail. It fails at once here, saying why.
    """
    path = data_path(settings)
    path.mkdir(parents=True, exist_ok=True)
    handles: list[IO[bytes]] = []
    for part in [r for r in ("stats", "join") if settings.role in (r, "all")]:
        handle = (path / f".{part}.lock").open("a+b")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            for held in handles:
                held.close()
            raise RuntimeError(
                f"the {part} tables in {path} are in use by another features worker; give "
                "each worker on this machine its own DRIFTLINE_DATA_DIR"
            ) from None
        handles.append(handle)
    return handles


@dataclass
class FeaturesApp:
    """The faust app and the pipeline it drives (tests and `run` reach both)."""

    app: faust.App
    pipeline: FeaturesPipeline
    replication: tuple[int, int] = (1, 1)  # of its own topics: factor, min.insync.replicas
    versions: dict[Version, ModelVersion] = field(default_factory=dict)
    # Set by the tables' recovery callbacks (in the event loop); read by /readyz's thread,
    # which must never touch faust objects itself.
    waiting_for: set[str] = field(default_factory=set)

    @property
    def ready(self) -> bool:
        return not self.waiting_for


def create_app(settings: FeaturesSettings) -> faust.App:
    """The faust app of these settings (metrics on a registry of its own)."""
    from prometheus_client import CollectorRegistry

    return build(settings, FeaturesMetrics(CollectorRegistry())).app


def build(
    settings: FeaturesSettings,
    metrics: FeaturesMetrics,
    store: FeatureStore | None = None,
    replicas: tuple[int, int] | None = None,
) -> FeaturesApp:
    """Build the app and its pipeline; only the cluster's metadata is read (brokers, unless
    `replicas` says how to replicate the app's own topics, and partitions of its sources)
    until a faust Worker starts it."""
    s = settings
    replicas = replicas or replication(s)
    # faust's own topics are replicated like every other (it creates them if they are missing;
    # the worker's start creates them first, from the same values: startup.topic_needs).
    topic_config = {"min.insync.replicas": str(replicas[1])}
    topics = s.kafka.topics
    datadir = data_path(s)
    datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    faustfix.install()  # commits past transaction markers, and read_committed (faustfix.py)
    app = faust.App(
        s.faust_app_id,
        broker=broker_urls(s.kafka.bootstrap_servers),
        # The same SASL/TLS settings as every other service's librdkafka clients.
        broker_credentials=faust_credentials(s.kafka),
        store=s.table_store,
        topic_allow_declare=True,
        topic_replication_factor=replicas[0],
        topic_partitions=s.join_partitions,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=s.commit_interval_s,
        web_enabled=False,
        worker_redirect_stdouts=False,
        autodiscover=False,
        producer_acks=-1,
        datadir=str(datadir),
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=s.heartbeat_interval_s,
        stream_buffer_maxsize=max(4096, 2 * s.batch_max),
        producer_linger=0.005,  # changelog and join records go out in batches, not one by one
        # Each join worker recovers only its active partitions: a standby would hold (and our
        # timers would act on) another worker's events.
        table_standby_replicas=0,
    )
    outbox = TopicOutbox(app)
    results_topic = outbox.declare(topics.inference_results)
    tables = PipelineTables()
    rocks = RocksOptions(s.table_memory_mb * MIB) if s.on_disk else None

    def by_asset(key: bytes) -> int:
        return key_partition(key.split(KEY_SEP, 1)[0], s.join_partitions)

    def state_table(
        table: Any,
        partitions: int | None = None,
        partition_of: PartitionOf | None = None,
        *,
        logged: bool = True,
    ) -> StateTable:
        if rocks is None:
            return FaustTable(table, partitions)
        return faust_disk_table(table, rocks, partition_of=partition_of, logged=logged)

    stats_table = join_events = accuracy = None
    reader: KafkaInputReader | None = None
    if s.runs_stats:
        stats_table = app.Table(
            "stats",
            key_type=bytes,
            value_type=bytes,
            partitions=topic_partitions(s, topics.inference_results),
            extra_topic_configs=topic_config,
        )
        tables.stats = state_table(stats_table)
    if s.runs_join:
        join_options: dict[str, Any] = {
            "key_type": bytes,
            "value_type": bytes,
            "partitions": s.join_partitions,
            "use_partitioner": True,  # partitioned by asset id, as the join topic is
            "extra_topic_configs": topic_config,
        }
        join_events = app.Table("join-events", **join_options)
        join_labels = app.Table("join-labels", **join_options)
        join_index = app.Table("join-index", **join_options)
        accuracy = app.Table("accuracy", **join_options)
        # Keys of events and labels start with their asset, so their partition is known
        # from the key; index and accuracy keys are always written with their partition.
        tables.states = state_table(join_events, s.join_partitions, by_asset)
        tables.parked = state_table(join_labels, s.join_partitions, by_asset)
        # The index is rebuilt from the events and waiting labels at every recovery
        # (JoinProcessor.restore), so on disk it sends no changelog: two records fewer per
        # event, a third of what a join worker sent.
        tables.index = state_table(join_index, s.join_partitions, logged=False)
        tables.accuracy = state_table(accuracy, s.join_partitions)
    if store is None:
        store = RedisFeatureStore.from_url(s.redis_url.get_secret_value(), s.redis_timeout_s)
    if s.runs_join:
        reader = KafkaInputReader(
            s.kafka, f"{s.faust_app_id}-readback", timeout_s=s.registry_timeout_s
        )
    join_tables = [tables.states, tables.parked, tables.index, tables.accuracy]
    pipeline = FeaturesPipeline(s, metrics, store, outbox, tables, reader=reader)
    features = FeaturesApp(app, pipeline, replicas)
    take = {"max_": s.batch_max, "within": s.batch_wait_s}

    if s.runs_stats:
        # Only the statistics read results here: the join's router (router.py) forwards
        # inputs, results and labels to the join topic, outside faust.

        @app.agent(results_topic, name="results")
        async def on_results(stream: Any) -> None:
            async for events in stream.take_events(**take):
                await pipeline.on_results(records(events), forward=False)

    # Timers leave the state alone until the tables are recovered.
    async def flush() -> None:
        if features.ready:
            await pipeline.flush()

    async def evict() -> None:
        if features.ready:
            with holding_changelogs(join_tables):
                await pipeline.evict()

    app.timer(s.flush_interval_s, name="flush")(flush)
    app.timer(s.evict_interval_s, name="evict")(evict)

    if stats_table is not None:
        features.waiting_for.add("stats")

        @stats_table.on_recover
        async def stats_recovered() -> None:
            pipeline.on_stats_recovered()
            features.waiting_for.discard("stats")

    if s.runs_join:
        join_topic = outbox.declare(
            pipeline.join_topic, partitions=s.join_partitions, internal=True, config=topic_config
        )

        @app.agent(join_topic, name="join")
        async def on_join(stream: Any) -> None:
            async for events in stream.take_events(**take):
                # A key's changelog record is sent once per batch (rocks.holding_changelog).
                with holding_changelogs(join_tables):
                    await pipeline.on_join(records(events))

        # Drift checks need every version's reference profile: a failed read is retried,
        # since the rest of the app does not depend on the registry.
        follower = RegistryFollower(
            s.kafka,
            topics.models_registry,
            "driftline-features-registry",
            timeout_s=s.registry_timeout_s,
            retry_s=5.0,
        )

        async def drift() -> None:
            if not features.ready:
                return
            if follower.ident is None:
                follower.start()  # once; the thread keeps the versions current from then on
            features.versions = follower.versions()
            await pipeline.check_drift(features.versions)

        app.timer(s.drift_interval_s, name="drift")(drift)

        assert join_events is not None

        features.waiting_for.add("join")

        @join_events.on_recover
        async def join_recovered() -> None:
            await pipeline.on_join_recovered()
            features.waiting_for.discard("join")

    return features
