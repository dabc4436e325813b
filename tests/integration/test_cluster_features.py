"""Faults of the features app on the three-node cluster (the session fixture `cluster`), each
with the time it took to recover and its counts printed:
- kill -9 of a worker (statistics and join) while results and labels flow, then a restart on
  its data dir: Redis converges to what `driftline features rebuild` computes from Kafka, live
  accuracy included, and every label yields a labelled window (at least once: a label settled
  as the kill came may yield two, and counts once). The kill comes once with the flow paced,
  once as the join begins a burst (its changelogs then have the most records in flight: when
  live accuracy lost or doubled counts before it was recounted from the join's states, and
  labels were left waiting for good before they were decided again on recovery);
- kill -9 of Redis, then a restart (empty: no persistence) while statistics flow: the feature
  store converges to the rebuild's figures.
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
import redis

from driftline.schemas import codec
from driftline.schemas.contracts import INSULATOR_CLASSES
from driftline.schemas.messages import Label, LabelledWindow
from driftline.services.localstack import LocalStack
from driftline.services.runtime.metrics import ACCURACY_SCORED
from driftline.services.runtime.settings import KafkaSettings
from tests.integration.cluster_io import kafka_on, wait_for
from tests.integration.kafka_io import drain
from tests.integration.test_features import (
    MINUTE,
    FeaturesProcess,
    base_minute,
    produce_labels,
    produce_results,
    produce_windows,
    random_results,
    sensor_windows,
)
from tests.integration.test_features_faults import snapshot

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.own_script,  # scripts/cluster-faults
    pytest.mark.timeout(300),
]


def _features(
    cluster: LocalStack, kafka: KafkaSettings, key_prefix: str, log: Path, **env: str
) -> FeaturesProcess:
    return FeaturesProcess(
        kafka,
        cluster.status().redis_url,
        key_prefix,
        log,
        {
            "DRIFTLINE_LABEL_WAIT_S": "0",
            "DRIFTLINE_DATA_DIR": str(log.parent / "faust"),
            **{f"DRIFTLINE_{k.upper()}": v for k, v in env.items()},
        },
    )


class Flow:
    """Windows, their results and (one chunk behind) labels for every third of them, sent in
    chunks from a thread: the traffic a features worker sees while a fault hits it."""

    def __init__(self, kafka: KafkaSettings, chunks: int, per_chunk: int, labels: bool) -> None:
        t0 = base_minute()
        self.windows = sensor_windows(chunks * per_chunk, t0, seed=51, assets=6, step_ms=250)
        self.results = random_results(self.windows, seed=51)
        self.labels = [
            Label(
                event_id=w.event_id,
                asset_id=w.asset_id,
                true_class=INSULATOR_CLASSES[i % 4],
                source="field",
                label_time_ms=w.event_time_ms + MINUTE,
            )
            for i, w in enumerate(self.windows)
            if labels and i % 3 == 0
        ]
        self.kafka = kafka
        self.per_chunk = per_chunk
        self.sent_chunks = 0
        self.failed: BaseException | None = None
        self.go = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def send(self, chunk: int) -> None:
        lo, hi = chunk * self.per_chunk, (chunk + 1) * self.per_chunk
        produce_windows(self.kafka, self.windows[lo:hi])
        produce_results(self.kafka, self.results[lo:hi])
        ids = {w.event_id for w in self.windows[lo:hi]}
        produce_labels(self.kafka, [lab for lab in self.labels if lab.event_id in ids])
        self.sent_chunks = chunk + 1

    def _run(self) -> None:
        try:
            self.go.wait()
            chunks = len(self.windows) // self.per_chunk
            for chunk in range(self.sent_chunks, chunks):
                self.send(chunk)
                time.sleep(0.2)  # paced: the fault lands mid-flow
        except BaseException as exc:  # reported by the test
            self.failed = exc

    def finish(self, timeout_s: float) -> None:
        self.thread.join(timeout=timeout_s)
        assert self.failed is None, f"sending failed: {self.failed!r}"
        assert not self.thread.is_alive(), "sending did not finish"


def _rebuilt(kafka: KafkaSettings, redis_url: str) -> dict[str, dict[str, str]]:
    """What `driftline features rebuild --fresh` writes, under a key prefix of its own."""
    prefix = f"r{uuid.uuid4().hex[:10]}:"
    cmd = [sys.executable, "-m", "driftline.services.cli", "features", "rebuild", "--fresh"]
    args = ["--bootstrap-servers", kafka.bootstrap_servers, "--topic-prefix", kafka.topic_prefix]
    args += ["--redis-url", redis_url, "--redis-key-prefix", prefix]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"rebuild failed:\n{done.stdout}\n{done.stderr}"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        state = snapshot(client, prefix)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _live(redis_url: str, prefix: str) -> dict[str, dict[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2)
    try:
        return {k.removeprefix(prefix): v for k, v in snapshot(client, prefix).items()}
    except redis.RedisError:
        return {}
    finally:
        client.close()


def _mismatch(live: dict[str, dict[str, str]], want: dict[str, dict[str, str]]) -> str:
    missing = sorted(set(want) - set(live))
    extra = sorted(set(live) - set(want))
    differ = sorted(k for k in set(want) & set(live) if want[k] != live[k])
    first = f"{differ[0]}: live {live[differ[0]]} rebuilt {want[differ[0]]}" if differ else ""
    return (
        f"{len(want)} keys rebuilt, {len(live)} live: {len(missing)} missing {missing[:3]}, "
        f"{len(extra)} extra {extra[:3]}, {len(differ)} differ {first}"
    )


def _converge(
    app: FeaturesProcess, kafka: KafkaSettings, prefix: str, timeout_s: float, *, stats_only: bool
) -> float:
    """Seconds until the live key space equals a fresh rebuild of it (with stats_only, less
    the live accuracy, which a worker of role stats does not write)."""

    def kept(state: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        return {k: v for k, v in state.items() if not (stats_only and k.startswith("accuracy:"))}

    want = kept(_rebuilt(kafka, app.redis_url))
    assert any(k.startswith("stats:") for k in want), "the rebuild wrote no statistics"
    start = time.monotonic()
    try:
        app.wait(lambda: kept(_live(app.redis_url, prefix)) == want, timeout_s, "Redis to converge")
    except AssertionError as exc:
        live = kept(_live(app.redis_url, prefix))
        raise AssertionError(f"{_mismatch(live, want)}\n{exc}") from None
    return time.monotonic() - start


def _cleanup(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.unlink(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


def _scored(app: FeaturesProcess) -> float:
    """Events the join has counted as scored (every model version)."""
    return sum(v for (name, _), v in app.metrics().items() if name == ACCURACY_SCORED)


@pytest.mark.parametrize("moment", ["paced", "busy-join"])
def test_a_killed_features_worker_restarts_into_the_rebuilds_state_and_joins_each_label_once(
    cluster: LocalStack, tmp_path: Path, moment: str
) -> None:
    kafka = kafka_on(cluster)
    prefix = f"f{uuid.uuid4().hex[:10]}:"
    flow = Flow(kafka, chunks=12, per_chunk=100, labels=True)
    app = _features(
        cluster, kafka, prefix, tmp_path / "features-0.log", role="all", label_wait_s="120"
    )
    try:
        app.start()
        flow.send(0)
        flow.send(1)
        app.wait(
            lambda: app.metric("driftline_feature_events_total", outcome="accepted") >= 200,
            60,
            "the first results consumed",
        )
        if moment == "busy-join":
            # Five chunks at once, and the kill once the join has begun on them.
            for chunk in range(2, 7):
                flow.send(chunk)
            wait_for(lambda: _scored(app) >= 220, 60, "the join into the burst", 0.01)
        flow.thread.start()
        flow.go.set()
        wait_for(lambda: flow.sent_chunks >= 5, 60, "the flow under way")
        scored_at_kill = _scored(app)
        app.kill()  # SIGKILL mid-flow: no commit, no flush, no leave-group
        killed = time.monotonic()
        at_kill = flow.sent_chunks
        app = _features(
            cluster, kafka, prefix, tmp_path / "features-1.log", role="all", label_wait_s="120"
        )
        app.start()
        ready_s = time.monotonic() - killed
        flow.finish(timeout_s=120)

        emitted = drain(kafka, kafka.topics.training_windows, expect=len(flow.labels), timeout_s=90)
        joined = Counter(codec.decode(LabelledWindow, m.value()).event_id for m in emitted)
        labelled = {lab.event_id for lab in flow.labels}
        lost = len(labelled - set(joined))
        repeated = sum(c - 1 for c in joined.values())
        print(
            f"\nkill -9 of a features worker ({moment}) after {at_kill} of 12 chunks "
            f"({scored_at_kill:.0f} events scored by the join): ready again {ready_s:.1f} s "
            f"later, {len(flow.results)} results, {len(labelled)} labels: "
            f"{lost} without a labelled window, {repeated} repeated"
        )
        dlq = drain(kafka, f"{kafka.topics.feedback_labels}.dlq", expect=0, timeout_s=5)
        missing = sorted(labelled - set(joined))
        assert lost == 0, (
            f"{lost} labels yielded no labelled window ({len(dlq)} dead-lettered): "
            f"{missing[:20]}\n{app.log_tail()}"
        )
        # Windows are at least once: a label settled as the kill came can be emitted again (its
        # event's mark had not reached the changelog: JoinProcessor.confirm), never more than a
        # chunk's worth; live accuracy and the rebuild count its label once.
        assert repeated <= len(flow.labels) // 12, f"{repeated} labelled windows emitted twice"
        assert set(joined) == labelled
        converged_s = _converge(app, kafka, prefix, 90, stats_only=False)
        log = (tmp_path / "features-1.log").read_text(errors="replace").splitlines()
        recounts = [line.split(" WARNING ")[-1] for line in log if "accuracy recounted" in line]
        print(
            f"statistics and live accuracy in Redis equal to the rebuild {converged_s:.1f} s "
            f"after it; recounts that corrected the table: {recounts or 'none'}"
        )
    finally:
        app.stop()
        _cleanup(cluster.status().redis_url, prefix)


def test_killing_redis_under_the_statistics_the_store_converges_after_its_restart(
    cluster: LocalStack, tmp_path: Path
) -> None:
    kafka = kafka_on(cluster)
    prefix = f"f{uuid.uuid4().hex[:10]}:"
    flow = Flow(kafka, chunks=12, per_chunk=100, labels=False)
    app = _features(
        cluster,
        kafka,
        prefix,
        tmp_path / "features.log",
        role="stats",
        redis_retry_max_s="1",
        redis_timeout_s="1",
    )
    try:
        app.start()
        flow.send(0)
        app.wait(
            lambda: any(k.startswith("stats:") for k in _live(app.redis_url, prefix)), 60, "stats"
        )
        flow.thread.start()
        flow.go.set()
        wait_for(lambda: flow.sent_chunks >= 4, 60, "the flow under way")
        pid = cluster.status().redis_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        at_kill = flow.sent_chunks
        app.wait(lambda: app.metric("driftline_feature_store_up") == 0.0, 30, "Redis seen down")
        cluster.up(timeout_s=120)  # Redis back, empty (no persistence), on the same port
        down_s = time.monotonic() - killed
        flow.finish(timeout_s=120)
        app.wait(
            lambda: (
                app.metric("driftline_feature_events_total", outcome="accepted")
                == len(flow.results)
            ),
            60,
            "every result consumed",
        )
        app.wait(lambda: app.metric("driftline_feature_store_up") == 1.0, 30, "Redis seen up")
        converged_s = _converge(app, kafka, prefix, 90, stats_only=True)
        print(
            f"\nkill -9 of Redis after {at_kill} of 12 chunks: back after {down_s:.1f} s, the "
            f"store equal to the rebuild {converged_s:.1f} s after the rebuild; "
            f"{len(flow.results)} results"
        )
    finally:
        app.stop()
        cluster.up(timeout_s=120)
        _cleanup(cluster.status().redis_url, prefix)
