"""What the three-node cluster tests (tests/integration/test_cluster*.py) share: a topic set
per test, a champion, inference processes, a steady stream and its tally by event id, and
polls of a consumer group's committed offsets and members."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from driftline.schemas import codec
from driftline.schemas.messages import InferenceResult
from driftline.services.localstack import LocalStack
from driftline.services.runtime.kafka import create_topics
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.simulator import sensors
from driftline.services.simulator.sensors import SimulationReport
from driftline.services.simulator.settings import SimulatorSettings
from tests.integration.kafka_io import drain

PARTITIONS = 3
RATE = 150  # sensor windows per second


def kafka_on(stack: LocalStack) -> KafkaSettings:
    """Settings with a topic prefix of the test's own, its topics created (3 partitions)."""
    settings = KafkaSettings(
        bootstrap_servers=stack.status().bootstrap_servers,
        topic_prefix=f"c{uuid.uuid4().hex[:8]}.",
    )
    create_topics(settings, partitions=PARTITIONS)
    return settings


def publish_champion(kafka: KafkaSettings, model: object, root: Path) -> None:
    """The fixture's tiny sensor model as version 1, champion, artifacts under `root`."""
    from driftline.schemas.contracts import INSULATOR_CLASSES, MODEL_NAMES
    from driftline.schemas.messages import STATUS_CHAMPION, Lineage
    from driftline.trainer.bootstrap import TrainedModel
    from driftline.trainer.publish import publish_version

    assert isinstance(model, TrainedModel)
    publish_version(
        kafka=kafka,
        artifact_root=root.as_uri(),
        name=MODEL_NAMES["sensor"],
        version=1,
        modality="sensor",
        exported=model.exported,
        model=model.model,
        classes=list(INSULATOR_CLASSES),
        metrics={},
        lineage=Lineage(source="test"),
        status=STATUS_CHAMPION,
    )


def infer(
    kafka: KafkaSettings, log: Path, *, exactly_once: bool, instance: str
) -> subprocess.Popen[bytes]:
    """`driftline infer --modality sensor` as a process of its own, logging to `log`."""
    env = {
        **os.environ,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "DRIFTLINE_EXACTLY_ONCE": "true" if exactly_once else "false",
        "DRIFTLINE_INSTANCE_ID": instance,
        "DRIFTLINE_LOG_LEVEL": "INFO",
    }
    cmd = [sys.executable, "-m", "driftline.services.cli", "infer", "--modality", "sensor"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*cmd, "--max-batch", "50", "--max-wait-ms", "5"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process still running, then wait (SIGKILL after 30 s)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, tick: float = 0.25) -> float:
    """Seconds until check() held; AssertionError naming `what` after timeout_s."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(tick)
    return time.monotonic() - start


# ---- a consumer group: committed offsets, members ---------------------------------------------


def committed(client: AdminClient, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset of each partition of `topic` that has one."""
    request = [
        ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(PARTITIONS)])
    ]
    result = client.list_consumer_group_offsets(request)[group].result(timeout=10)
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.error is None}


def owners(client: AdminClient, group: str) -> list[int]:
    """Partitions owned by each member of the group that owns any."""
    described = client.describe_consumer_groups([group])[group].result(timeout=10)
    owned = [len(m.assignment.topic_partitions) for m in described.members]
    return [n for n in owned if n]


def advancing(client: AdminClient, group: str, topic: str, since: dict[int, int]) -> bool:
    """Whether every partition is committed more than 10 records past `since`."""
    now = committed(client, group, topic)
    return len(now) == PARTITIONS and all(now[p] > since.get(p, -1) + 10 for p in now)


# ---- a steady stream, and what reached inference.results -------------------------------------


@dataclass(frozen=True)
class Tally:
    """The windows sent, and of their results: events without any, results repeated."""

    windows: int
    lost: int
    duplicated: int

    def __str__(self) -> str:
        return f"{self.windows} windows, {self.lost} lost, {self.duplicated} duplicated"


class Stream:
    """The simulator sending `count` windows at RATE per second, in a thread."""

    def __init__(self, kafka: KafkaSettings, count: int, seed: int) -> None:
        self.kafka = kafka
        self.report: SimulationReport | None = None
        self.failed: BaseException | None = None
        settings = SimulatorSettings(kafka=kafka, count=count, rate=RATE, assets=30, seed=seed)

        def run() -> None:
            try:
                self.report = sensors.run(settings, progress=False, keep_truth=True)
            except BaseException as exc:  # reported by the test
                self.failed = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def truth(self, timeout_s: float) -> set[str]:
        self.thread.join(timeout=timeout_s)
        assert self.failed is None, f"the stream failed: {self.failed!r}"
        assert self.report is not None, "the stream did not finish"
        return {t.event_id for t in self.report.truth}

    def tally(self, timeout_s: float = 180) -> Tally:
        """Wait for the stream to end, then count its results by event id (read_committed)."""
        truth = self.truth(timeout_s)
        topic = self.kafka.topics.inference_results
        records = drain(self.kafka, topic, expect=len(truth), timeout_s=timeout_s)
        ids = Counter(codec.decode(InferenceResult, m.value()).event_id for m in records)
        return Tally(len(truth), len(truth - set(ids)), sum(c - 1 for c in ids.values()))
