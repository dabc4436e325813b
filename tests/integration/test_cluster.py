"""A real three-node Kafka cluster (LocalStack with --brokers 3 on loopback), and faults on it.

One cluster (the session fixture `cluster` of conftest.py) serves every cluster test. Topics
get 3 replicas and min.insync.replicas 2. The faults, each with results counted by event id
through a read_committed reader:
- exactly-once: kill -9 the broker that leads a partition of inference.results mid-stream,
  start it again later: 0 lost, 0 duplicated; at-least-once: 0 lost, duplicates printed;
- exactly-once: kill -9 one of three inference instances mid-stream: its partitions resume
  within the group's session timeout (6 s by default), 0 lost, 0 duplicated.
The time each fault took to recover from is printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from driftline.schemas import codec
from driftline.schemas.messages import InferenceResult
from driftline.services.localstack import LocalStack
from driftline.services.runtime.kafka import create_topics
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.simulator import sensors
from driftline.services.simulator.sensors import SimulationReport
from driftline.services.simulator.settings import SimulatorSettings
from tests.integration.kafka_io import drain
from tests.integration.test_delivery import _count_visible

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

PARTITIONS = 3
RATE = 150  # sensor windows per second


def _kafka(stack: LocalStack) -> KafkaSettings:
    settings = KafkaSettings(
        bootstrap_servers=stack.status().bootstrap_servers,
        topic_prefix=f"c{uuid.uuid4().hex[:8]}.",
    )
    create_topics(settings, partitions=PARTITIONS)
    return settings


def _publish_champion(kafka: KafkaSettings, model: object, root: Path) -> None:
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


def _infer(
    kafka: KafkaSettings, log: Path, *, exactly_once: bool, instance: str
) -> subprocess.Popen[bytes]:
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


class Stream:
    """The simulator sending `count` windows at RATE per second, in a thread."""

    def __init__(self, kafka: KafkaSettings, count: int, seed: int) -> None:
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


def _tally(kafka: KafkaSettings, truth: set[str]) -> tuple[int, int]:
    records = drain(kafka, kafka.topics.inference_results, expect=len(truth), timeout_s=180)
    ids = Counter(codec.decode(InferenceResult, m.value()).event_id for m in records)
    return len(truth - set(ids)), sum(c - 1 for c in ids.values())


def _leader(kafka: KafkaSettings, topic: str, partition: int) -> int:
    client = AdminClient(kafka.client_config())
    return int(client.list_topics(topic, timeout=10).topics[topic].partitions[partition].leader)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def test_every_topic_has_three_replicas_and_min_isr_two(cluster: LocalStack) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=cluster.status().bootstrap_servers,
        topic_prefix=f"c{uuid.uuid4().hex[:8]}.",
    )
    created, _ = create_topics(kafka, partitions=PARTITIONS)
    assert created, "no topics created"
    client = AdminClient(kafka.client_config())
    # Brokers learn new topics from the controller a moment apart: ask until all know them.
    deadline = time.monotonic() + 60
    while True:
        meta = client.list_topics(timeout=10)
        if set(created) <= set(meta.topics) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(meta.brokers) == 3
    assert set(created) <= set(meta.topics), sorted(set(created) - set(meta.topics))
    for name in created:
        for part in meta.topics[name].partitions.values():
            assert sorted(part.replicas) == [1, 2, 3], (name, part.replicas)
    configs = client.describe_configs([ConfigResource("topic", name) for name in created])
    for resource, future in configs.items():
        assert future.result(timeout=10)["min.insync.replicas"].value == "2", resource


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly-once", "at-least-once"])
def test_killing_the_leader_of_a_results_partition_loses_nothing(
    cluster: LocalStack, tiny_sensor_model: object, tmp_path: Path, exactly_once: bool
) -> None:
    kafka = _kafka(cluster)
    _publish_champion(kafka, tiny_sensor_model, tmp_path / "artifacts")
    log = tmp_path / "infer.log"
    proc = _infer(kafka, log, exactly_once=exactly_once, instance="leader-kill")
    try:
        stream = Stream(kafka, count=RATE * 30, seed=31)
        seen = _count_visible(kafka, kafka.topics.inference_results, 300, 120, committed=True)
        assert seen >= 300, f"no results before the kill:\n{log.read_text()[-3000:]}"
        node = _leader(kafka, kafka.topics.inference_results, 0)
        pid = cluster.status().kafka_pids[node - 1]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        more = _count_visible(
            kafka, kafka.topics.inference_results, seen + 300, 120, committed=True
        )
        resumed = time.monotonic() - killed
        assert more >= seen + 300, f"no results after the kill:\n{log.read_text()[-3000:]}"
        cluster.up(timeout_s=240)  # the killed node comes back and catches up
        truth = stream.truth(timeout_s=180)
        lost, duplicated = _tally(kafka, truth)
        mode = "exactly-once" if exactly_once else "at-least-once"
        print(
            f"\n{mode}: killed broker {node} (leader of results partition 0); 300 more results "
            f"committed {resumed:.1f} s later; {len(truth)} windows, {lost} lost, "
            f"{duplicated} duplicated"
        )
        assert lost == 0, f"{lost} events lost\n{log.read_text()[-3000:]}"
        if exactly_once:
            assert duplicated == 0, f"{duplicated} results repeated under exactly-once"
        assert proc.poll() is None, f"the consumer died:\n{log.read_text()[-3000:]}"
    finally:
        _stop([proc])
        cluster.up(timeout_s=240)


def _committed(client: AdminClient, group: str, topic: str) -> dict[int, int]:
    request = [
        ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(PARTITIONS)])
    ]
    result = client.list_consumer_group_offsets(request)[group].result(timeout=10)
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.error is None}


def test_killing_one_of_three_instances_resumes_its_partitions_within_seconds(
    cluster: LocalStack, tiny_sensor_model: object, tmp_path: Path
) -> None:
    kafka = _kafka(cluster)
    _publish_champion(kafka, tiny_sensor_model, tmp_path / "artifacts")
    logs = [tmp_path / f"infer-{i}.log" for i in range(3)]
    procs = [_infer(kafka, logs[i], exactly_once=True, instance=f"i{i}") for i in range(3)]
    client = AdminClient(kafka.client_config())
    group = f"{kafka.topic_prefix}driftline-inference-sensor"
    topic = kafka.topics.sensor_windows
    try:
        stream = Stream(kafka, count=RATE * 40, seed=32)
        # Every instance owns a partition and commits before the kill.
        deadline = time.monotonic() + 150
        before: dict[int, int] = {}
        while time.monotonic() < deadline:
            before = _committed(client, group, topic)
            described = client.describe_consumer_groups([group])[group].result(timeout=10)
            owners = [m for m in described.members if m.assignment.topic_partitions]
            if len(owners) == 3 and len(before) == PARTITIONS and min(before.values()) > 0:
                break
            time.sleep(0.5)
        assert len(before) == PARTITIONS, f"not every partition committed: {before}"
        assert min(before.values()) > 0, f"not every partition committed: {before}"
        procs[1].kill()  # SIGKILL: no leave-group, no commit
        killed = time.monotonic()
        at_kill = _committed(client, group, topic)
        resumed_at: dict[int, float] = {}
        deadline = killed + 90
        while len(resumed_at) < PARTITIONS and time.monotonic() < deadline:
            now = _committed(client, group, topic)
            for p, offset in now.items():
                if p not in resumed_at and offset > at_kill.get(p, -1) + 10:
                    resumed_at[p] = time.monotonic() - killed
            time.sleep(0.25)
        assert len(resumed_at) == PARTITIONS, f"partitions stalled after the kill: {resumed_at}"
        slowest = max(resumed_at.values())
        truth = stream.truth(timeout_s=180)
        lost, duplicated = _tally(kafka, truth)
        print(
            f"\nkill -9 of one of three exactly-once instances: every partition committing "
            f"again after {slowest:.1f} s (per partition {sorted(resumed_at.values())}); "
            f"{len(truth)} windows, {lost} lost, {duplicated} duplicated"
        )
        assert lost == 0, f"{lost} events lost"
        assert duplicated == 0, f"{duplicated} results repeated under exactly-once"
        # The goal is under 10 s (printed above); the assertion leaves room for a busy machine.
        assert slowest < 45, f"partitions took {slowest:.0f} s to resume"
    finally:
        _stop(procs)
