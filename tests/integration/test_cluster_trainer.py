"""kill -9 of the trainer on the three-node cluster (the session fixture `cluster`): during a
training, and during a publish (records produced in the registry transaction, not yet
committed). The registry stays on its last good version, every record's artifact verifies,
and the next `train --now` publishes the next version, consistent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from driftline.schemas.messages import STATUS_CHAMPION, ModelVersion
from driftline.services.localstack import LocalStack
from driftline.services.runtime import registry
from driftline.services.runtime.artifacts import FsspecArtifactStore, fetch_trusted
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.simulator.fleet import labelled_dataset
from tests.integration.cluster_io import kafka_on, publish_champion, wait_for
from tests.integration.test_trainer import DRIFTED, SENSOR, labelled_sensor_windows, produce

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.own_script,  # scripts/cluster-faults
    pytest.mark.timeout(300),
]

# `driftline train`, whose registry producer stops inside the publish: the records are produced
# in the lease's transaction and flushed, then a marker file is written and commit never comes.
PAUSED_PUBLISH = """
import sys, time
from pathlib import Path
from driftline.services.runtime import publishing
from driftline.services.cli import main

marker = Path(sys.argv[1])
real = publishing.producer

class Paused:
    def __init__(self, prod):
        self._prod = prod
    def __getattr__(self, name):
        return getattr(self._prod, name)
    def commit_transaction(self, *args):
        self._prod.flush(30)
        marker.write_text("records produced, not committed")
        time.sleep(3600)

publishing.producer = lambda *a, **kw: Paused(real(*a, **kw))
sys.exit(main(sys.argv[2:]))
"""


def _train(
    kafka: KafkaSettings, artifacts: Path, log: Path, *extra: str, prelude: list[str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "DRIFTLINE_ARTIFACT_ROOT": artifacts.as_uri(),
        "DRIFTLINE_DEVICE": "cpu",
        "DRIFTLINE_TORCH_THREADS": "1",
        "DRIFTLINE_MIN_HOLDOUT": "50",
        "DRIFTLINE_MIN_LABELS": "150",
    }
    head = prelude or ["-m", "driftline.services.cli"]
    args = ["train", "--now", "--modality", "sensor", *extra]
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *head, *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _registry_is_good(kafka: KafkaSettings, artifacts: Path) -> registry.RegistrySnapshot:
    """The registry read back: every record's artifact verifies against the record."""
    snap = registry.read_snapshot(kafka, kafka.topics.models_registry)
    store = FsspecArtifactStore(artifacts.as_uri())
    for mv in snap.versions.get(SENSOR, {}).values():
        fetch_trusted(store, mv)  # raises ArtifactRejected when bytes and record disagree
    return snap


def _killed(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=30)


def test_a_trainer_killed_in_training_or_in_publishing_leaves_the_last_good_version(
    cluster: LocalStack, tiny_sensor_model: object, tmp_path: Path
) -> None:
    kafka = kafka_on(cluster)
    artifacts = tmp_path / "artifacts"
    publish_champion(kafka, tiny_sensor_model, artifacts)
    x, y = labelled_dataset(300, seed=61, world=DRIFTED)
    produce(kafka, kafka.topics.training_windows, labelled_sensor_windows(x, y))
    champion = _registry_is_good(kafka, artifacts).champions[SENSOR]
    assert champion.version == 1

    # 1. Killed during a training: after its first epoch of many.
    log = tmp_path / "train-killed.log"
    proc = _train(kafka, artifacts, log, "--epochs", "500")
    try:
        wait_for(lambda: "epoch 1/500" in log.read_text(errors="replace"), 120, "the first epoch")
    finally:
        _killed(proc)
    snap = _registry_is_good(kafka, artifacts)
    assert sorted(snap.versions[SENSOR]) == [1], "a killed training published something"
    assert snap.champions[SENSOR] == champion

    # 2. Killed during a publish: artifacts written, records in an open transaction.
    marker = tmp_path / "in-transaction"
    log = tmp_path / "publish-killed.log"
    prelude = ["-c", PAUSED_PUBLISH, str(marker)]
    proc = _train(kafka, artifacts, log, "--epochs", "1", prelude=prelude)
    try:
        wait_for(marker.exists, 180, f"the publish to begin\n{log.read_text(errors='replace')}")
    finally:
        _killed(proc)
    killed = time.monotonic()
    orphans = sorted(p.name for p in (artifacts / SENSOR).iterdir() if not p.name.startswith("v1-"))
    assert orphans, "the killed publish wrote no artifacts: the kill missed the publish window"
    snap = _registry_is_good(kafka, artifacts)
    read_s = time.monotonic() - killed
    assert sorted(snap.versions[SENSOR]) == [1], "an uncommitted publish became visible"
    assert snap.champions[SENSOR] == champion

    # 3. The next run publishes version 2, consistent with its artifacts.
    log = tmp_path / "train-next.log"
    proc = _train(kafka, artifacts, log, "--epochs", "1")
    try:
        assert proc.wait(timeout=180) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            _killed(proc)
    published_s = time.monotonic() - killed
    text = log.read_text(errors="replace")
    assert "published insulator-sensor v2" in text, text[-3000:]
    snap = _registry_is_good(kafka, artifacts)
    assert sorted(snap.versions[SENSOR]) == [1, 2], sorted(snap.versions[SENSOR])
    v2: ModelVersion = snap.versions[SENSOR][2]
    assert not any(v2.artifact_uri.rstrip("/").endswith(f"{o}/model.onnx") for o in orphans)
    now = snap.champions[SENSOR]
    assert now.version == (2 if v2.status == STATUS_CHAMPION else 1), (now.version, v2.status)
    print(
        f"\ntrainer killed in epoch 1 and in a publish ({len(orphans)} orphaned artifact "
        f"folder): registry read back on v1 {read_s:.1f} s after the kill, the next "
        f"`train --now` published v2 ({v2.status}) {published_s:.1f} s after it"
    )
