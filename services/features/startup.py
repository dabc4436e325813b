"""Deterministic start of the features app: its topics exist first, and readiness means working.

faust declares its own topics (the join topic, every table's changelog) only once the worker
runs, in parallel with joining the consumer group. When the group's first assignment is
computed before the new topics reach the leader's metadata, faust's assignor logs "Ignoring
missing topic" and the agents reading them get no partitions until the next metadata refresh,
minutes later: the label join then sits idle while /readyz says ready. So, before the worker
starts, every topic the app reads or writes is created here (idempotently, with the options
faust would use) and the call returns only once the cluster metadata shows each one with a
leader for every partition.

Readiness is then computed from what the worker is really doing: no rebalance or table
recovery in progress, every table recovered at least once, and this worker holding at least
one partition of every topic an agent reads. The check runs in the event loop (faust state is
read only there); /readyz's thread reads the result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from driftline.services.features.settings import FeaturesSettings
from driftline.services.runtime.kafka import admin
from driftline.services.runtime.settings import KafkaSettings

log = logging.getLogger(__name__)


class MissingTopic(RuntimeError):
    """A topic the app reads that it does not own is missing: `driftline topics create`."""


@dataclass(frozen=True)
class TopicNeed:
    """A topic the app uses: whether it is the app's own (created here) and how."""

    name: str
    partitions: int | None
    own: bool
    compacted: bool = False
    replication_factor: int = 1
    min_insync_replicas: int = 1

    def new_topic(self) -> NewTopic:
        assert self.partitions is not None
        config = {
            "cleanup.policy": "compact" if self.compacted else "delete",
            "min.insync.replicas": str(self.min_insync_replicas),
        }
        return NewTopic(
            self.name,
            num_partitions=self.partitions,
            replication_factor=self.replication_factor,
            config=config,
        )


def _names(channel: Any) -> tuple[str, ...]:
    names = getattr(channel, "topics", None)
    return tuple(names) if names else ()


def topic_needs(
    app: Any, extra: Iterable[Any] = (), *, replication: tuple[int, int] | None = None
) -> list[TopicNeed]:
    """Every topic of a faust app: tables' changelogs, agents' sources, and `extra` topics.

    A topic is the app's own when faust declared it internal (its name starts with the app id);
    the rest (inference.results, the inputs, the labels) belong to `driftline topics create`.
    The app's own are replicated as `replication` says (factor, min.insync.replicas; the
    app's features.app.replication): by default faust's factor, min.insync.replicas 1.
    """
    conf = app.conf
    factor, min_isr = replication or (int(conf.topic_replication_factor or 1), 1)
    default_partitions = int(conf.topic_partitions)
    needs: dict[str, TopicNeed] = {}

    def add(topic: Any, *, compacted: bool) -> None:
        internal = bool(getattr(topic, "internal", False))
        partitions = getattr(topic, "partitions", None) or (
            default_partitions if internal else None
        )
        for name in _names(topic):
            if name not in needs:
                needs[name] = TopicNeed(name, partitions, internal, compacted, factor, min_isr)

    for table in app.tables.values():
        add(table.changelog_topic, compacted=True)
    for agent in app.agents.values():
        add(agent.channel, compacted=False)
    for topic in extra:
        add(topic, compacted=False)
    if not conf.topic_disable_leader:
        # faust's leader election topic, subscribed by every worker (faust's naming).
        leader = f"{conf.id}-__assignor-__leader"
        needs.setdefault(leader, TopicNeed(leader, 1, True, False, factor, min_isr))
    return sorted(needs.values(), key=lambda n: n.name)


def _visible(meta: Any, need: TopicNeed) -> bool:
    found = meta.topics.get(need.name)
    if found is None or found.error is not None or not found.partitions:
        return False
    if need.partitions is not None and len(found.partitions) < need.partitions:
        return False
    return all(p.leader >= 0 for p in found.partitions.values())


def ensure_topics(kafka: KafkaSettings, needs: list[TopicNeed], timeout_s: float = 60.0) -> None:
    """Create the app's own missing topics and wait until every needed topic has leaders.

    Raises MissingTopic for a missing topic the app does not own, and TimeoutError when the
    cluster does not show them in time.
    """
    client = admin(kafka)
    meta = client.list_topics(timeout=min(timeout_s, 10.0))
    absent = [n for n in needs if n.name not in meta.topics]
    foreign = [n.name for n in absent if not n.own]
    if foreign:
        raise MissingTopic(
            f"topics {', '.join(foreign)} not found; run `driftline topics create` "
            "with the same DRIFTLINE_KAFKA__TOPIC_PREFIX first"
        )
    if absent:
        futures = client.create_topics(
            [n.new_topic() for n in absent], request_timeout=min(timeout_s, 30.0)
        )
        for future in futures.values():
            try:
                future.result(timeout=timeout_s)
            except KafkaException as exc:
                err = exc.args[0]
                if not (
                    isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    raise
        log.info("created the features app's topics: %s", ", ".join(n.name for n in absent))
    for need in needs:
        found = meta.topics.get(need.name)
        if need.own and found is not None and found.partitions:
            have = min(len(p.replicas) for p in found.partitions.values())
            if have < need.replication_factor:
                log.warning(
                    "topic %s has %d replicas, fewer than the %d new ones get: it was created "
                    "so before; kafka-reassign-partitions adds replicas",
                    need.name,
                    have,
                    need.replication_factor,
                )
    deadline = time.monotonic() + timeout_s
    while True:
        meta = client.list_topics(timeout=min(timeout_s, 10.0))
        waiting = [n.name for n in needs if not _visible(meta, n)]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without leaders after {timeout_s:.0f}s: {waiting}")
        time.sleep(0.2)


def deployed_join_partitions(settings: FeaturesSettings) -> FeaturesSettings:
    """The settings with the running deployment's join partition count, when its topic exists.

    Live accuracy is kept per join partition (an asset's partition of the join topic), so a
    rebuild must hash assets over the same count the app used, whatever this shell's setting.
    """
    topic = f"{settings.faust_app_id}-join"
    meta = admin(settings.kafka).list_topics(topic, timeout=settings.registry_timeout_s)
    found = meta.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        return settings
    count = len(found.partitions)
    if count == settings.join_partitions:
        return settings
    log.warning(
        "the join topic %s has %d partitions; using that, not join_partitions=%d",
        topic,
        count,
        settings.join_partitions,
    )
    return settings.model_copy(update={"join_partitions": count})


@dataclass
class Readiness:
    """Whether the worker is doing its job; updated in the event loop, read from any thread."""

    tables: set[str] = field(default_factory=set)
    ready: bool = False
    reason: str = "starting"

    def update(self, app: Any, waiting_tables: set[str]) -> bool:
        """Recompute from the app's state (call in the event loop)."""
        reason = self._why_not(app, waiting_tables)
        if (reason or "ready") != self.reason:  # log changes only, not every check
            if reason is None:
                log.info("ready: every agent has partitions and every table is recovered")
            else:
                log.info("not ready: %s", reason)
        self.reason = reason or "ready"
        self.ready = reason is None
        return self.ready

    @staticmethod
    def _why_not(app: Any, waiting_tables: set[str]) -> str | None:
        if waiting_tables:
            return f"recovering tables {', '.join(sorted(waiting_tables))}"
        if getattr(app, "rebalancing", False):
            return "rebalancing"
        if getattr(app, "in_recovery", False):
            return "recovering table changelogs"
        consumer = getattr(app, "_consumer", None)
        if consumer is None:
            return "consumer not started"
        try:
            assignment = consumer.assignment()
        except Exception as exc:  # the consumer may be mid-restart; not ready then
            return f"no assignment yet ({exc})"
        held = {tp.topic for tp in assignment}
        wanted = {name for agent in app.agents.values() for name in _names(agent.channel)}
        missing = sorted(wanted - held)
        if missing:
            return f"no partitions yet of {', '.join(missing)}"
        return None
