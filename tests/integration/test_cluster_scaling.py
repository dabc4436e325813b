"""The exactly-once inference group scaled 1 -> 3 -> 1 under a steady stream, on the
three-node cluster (the session fixture `cluster`): 0 lost, 0 duplicated (results counted by
event id, read_committed), with the seconds each step took to settle printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from driftline.services.localstack import LocalStack
from tests.integration.cluster_io import (
    PARTITIONS,
    Stream,
    advancing,
    committed,
    infer,
    kafka_on,
    owners,
    publish_champion,
    stop,
    wait_for,
)
from tests.integration.test_delivery import _count_visible

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.own_script,  # scripts/cluster-faults
    pytest.mark.timeout(300),
]


def test_scaling_exactly_once_inference_1_3_1_loses_and_repeats_nothing(
    cluster: LocalStack, tiny_sensor_model: object, tmp_path: Path
) -> None:
    kafka = kafka_on(cluster)
    publish_champion(kafka, tiny_sensor_model, tmp_path / "artifacts")
    logs = [tmp_path / f"infer-{i}.log" for i in range(3)]
    client = AdminClient(kafka.client_config())
    group = f"{kafka.topic_prefix}driftline-inference-sensor"
    topic = kafka.topics.sensor_windows
    procs = [infer(kafka, logs[0], exactly_once=True, instance="s0")]
    try:
        stream = Stream(kafka, count=6000, seed=41)  # 40 s at 150/s
        seen = _count_visible(kafka, kafka.topics.inference_results, 300, 120, committed=True)
        assert seen >= 300, f"no results from one instance:\n{logs[0].read_text()[-3000:]}"

        at_up = committed(client, group, topic)
        procs += [infer(kafka, logs[i], exactly_once=True, instance=f"s{i}") for i in (1, 2)]
        up_s = wait_for(
            lambda: owners(client, group) == [1, 1, 1] and advancing(client, group, topic, at_up),
            90,
            "three instances each committing a partition",
        )
        assert stream.thread.is_alive(), "the stream ended before the scale-down; make it longer"

        at_down = committed(client, group, topic)
        stop(procs[1:])  # SIGTERM: they leave the group after their last transaction
        down_s = wait_for(
            lambda: (
                owners(client, group) == [PARTITIONS] and advancing(client, group, topic, at_down)
            ),
            90,
            "the one instance left committing every partition",
        )
        assert [p.returncode for p in procs[1:]] == [0, 0], "a stopped instance exited in error"
        tally = stream.tally()
        print(
            f"\nexactly-once inference scaled 1 -> 3 -> 1: three committing {up_s:.1f} s after "
            f"the start of two more, one committing all {down_s:.1f} s after they stopped; "
            f"{tally}"
        )
        assert tally.lost == 0, f"{tally.lost} events lost\n{logs[0].read_text()[-3000:]}"
        assert tally.duplicated == 0, f"{tally.duplicated} results repeated under exactly-once"
        assert procs[0].poll() is None, f"the first instance died:\n{logs[0].read_text()[-3000:]}"
    finally:
        stop(procs)
