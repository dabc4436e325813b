"""A cluster's ports and its topics' replication, without starting anything."""

from __future__ import annotations

import pytest

from driftline.services.localstack import StackPorts
from driftline.services.runtime.kafka import replication_plan
from driftline.services.runtime.settings import KafkaSettings


def test_three_brokers_take_ports_two_apart_and_survive_a_round_trip() -> None:
    ports = StackPorts().with_brokers(3)
    assert ports.brokers == 3
    assert ports.kafka_ports == (9092, 9094, 9096)
    assert ports.controller_ports == (9093, 9095, 9097)
    assert StackPorts.from_json(ports.to_json()) == ports
    node = ports.node(2)
    assert (node.kafka, node.controller, node.brokers) == (9096, 9097, 1)


def test_ports_of_a_cluster_are_checked() -> None:
    with pytest.raises(ValueError, match="distinct"):
        StackPorts(more_kafka=(9092,), more_controllers=(9095,))
    with pytest.raises(ValueError, match="client and a controller"):
        StackPorts(more_kafka=(9094,), more_controllers=())
    with pytest.raises(ValueError, match="single-node"):
        StackPorts(sasl=9099).with_brokers(3)


@pytest.mark.parametrize(("brokers", "plan"), [(1, (1, 1)), (2, (1, 1)), (3, (3, 2)), (5, (3, 2))])
def test_replication_follows_the_cluster_size(brokers: int, plan: tuple[int, int]) -> None:
    assert replication_plan(KafkaSettings(), brokers) == plan


def test_explicit_replication_is_checked_against_the_cluster() -> None:
    assert replication_plan(KafkaSettings(replication_factor=2), 3) == (2, 1)
    assert replication_plan(KafkaSettings(min_insync_replicas=3), 3) == (3, 3)
    with pytest.raises(ValueError, match="needs at least 3 brokers"):
        replication_plan(KafkaSettings(replication_factor=3), 1)
    with pytest.raises(ValueError, match="no write"):
        replication_plan(KafkaSettings(replication_factor=3, min_insync_replicas=4), 3)


def test_stack_up_takes_a_quorum_size_of_brokers() -> None:
    import argparse

    from driftline.services.commands.stack import _brokers

    assert _brokers("3") == 3
    for bad in ("2", "0", "three"):
        with pytest.raises(argparse.ArgumentTypeError):
            _brokers(bad)


def test_the_features_apps_own_topics_are_created_with_the_plan() -> None:
    from types import SimpleNamespace

    from driftline.services.features.startup import topic_needs

    def topic(name: str, *, internal: bool, partitions: int | None = None) -> SimpleNamespace:
        return SimpleNamespace(topics=(name,), internal=internal, partitions=partitions)

    app = SimpleNamespace(
        conf=SimpleNamespace(
            id="t.features",
            topic_replication_factor=3,
            topic_partitions=6,
            topic_disable_leader=False,
        ),
        tables={"stats": SimpleNamespace(changelog_topic=topic("t.features-stats", internal=True))},
        agents={"results": SimpleNamespace(channel=topic("t.inference.results", internal=False))},
    )
    needs = {n.name: n for n in topic_needs(app, replication=replication_plan(KafkaSettings(), 3))}
    assert sorted(needs) == [
        "t.features-__assignor-__leader",
        "t.features-stats",
        "t.inference.results",
    ]
    assert not needs["t.inference.results"].own  # `driftline topics create`'s, not the app's
    for name in ("t.features-stats", "t.features-__assignor-__leader"):
        new = needs[name].new_topic()
        assert new.replication_factor == 3
        assert new.config["min.insync.replicas"] == "2"
