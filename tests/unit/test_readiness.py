"""The features worker's readiness: recomputed on every health check, logged only on change."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from driftline.services.features.startup import Readiness


@dataclass
class FakeConsumer:
    topics: set[str]

    def assignment(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(topic=t, partition=0) for t in sorted(self.topics)]


@dataclass
class FakeApp:
    """The attributes of a faust app that readiness reads."""

    _consumer: FakeConsumer
    agents: dict[str, SimpleNamespace] = field(default_factory=dict)
    rebalancing: bool = False
    in_recovery: bool = False


def test_readiness_is_logged_when_it_changes_not_at_every_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = SimpleNamespace(channel=SimpleNamespace(topics=("results",)))
    app = FakeApp(FakeConsumer(set()), {"results": agent})
    ready = Readiness()
    caplog.set_level(logging.INFO, logger="driftline.services.features.startup")
    assert not ready.update(app, set())
    app._consumer.topics = {"results"}
    for _ in range(5):
        assert ready.update(app, set())
    app.rebalancing = True
    assert not ready.update(app, set())
    assert not ready.update(app, set())
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "not ready: no partitions yet of results",
        "ready: every agent has partitions and every table is recovered",
        "not ready: rebalancing",
    ]
    assert ready.reason == "rebalancing"
