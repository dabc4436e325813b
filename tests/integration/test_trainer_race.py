"""Two trainer services and a `train --now`, started at once on one model, publish versions
that never collide: each record has a version number and an artifact folder of its own, and
every artifact verifies against its record. (The lease itself is tested in
test_registry_lease.py; this is the same race through three real processes.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from driftline.schemas.messages import ModelVersion
from driftline.services.runtime import registry
from driftline.services.runtime.artifacts import FsspecArtifactStore, fetch_trusted
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.simulator.fleet import labelled_dataset
from tests.integration.test_trainer import (
    DRIFTED,
    SENSOR,
    labelled_sensor_windows,
    produce,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

LABELS = 300


def _train(env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "driftline.services.cli", "train", "--modality", "sensor"]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*cmd, "--epochs", "1", *extra], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _published(kafka: KafkaSettings) -> list[ModelVersion]:
    snapshot = registry.read_snapshot(kafka, kafka.topics.models_registry)
    return [mv for v, mv in sorted(snapshot.versions.get(SENSOR, {}).items()) if v > 1]


@pytest.mark.usefixtures("sensor_champion")
def test_two_trainers_and_a_train_now_publish_distinct_versions_that_all_verify(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    x, y = labelled_dataset(LABELS, seed=21, world=DRIFTED)
    produce(kafka, kafka.topics.training_windows, labelled_sensor_windows(x, y))
    artifacts = tmp_path / "shared-artifacts"  # one store for all three, as in a deployment
    base = {
        **os.environ,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "DRIFTLINE_ARTIFACT_ROOT": artifacts.as_uri(),
        "DRIFTLINE_DEVICE": "cpu",
        "DRIFTLINE_TORCH_THREADS": "1",
        "DRIFTLINE_MIN_HOLDOUT": "50",
        "DRIFTLINE_MIN_NEW_LABELS": str(LABELS // 2),
        "DRIFTLINE_MIN_LABELS": str(LABELS // 2),
    }
    logs = [tmp_path / f"trainer-{i}.log" for i in range(2)] + [tmp_path / "now.log"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(2):
            # Each service its own group: both read every labelled window, so both train.
            env = {**base, "DRIFTLINE_GROUP_ID": f"{kafka.topic_prefix}race-{i}"}
            procs.append(_train(env, logs[i]))
        procs.append(_train(base, logs[2], "--now"))

        deadline = time.monotonic() + 300
        published: list[ModelVersion] = []
        while time.monotonic() < deadline:
            published = _published(kafka)
            if len(published) >= 3 and procs[2].poll() is not None:
                break
            dead = [i for i, p in enumerate(procs[:2]) if p.poll() is not None]
            assert not dead, f"trainer {dead[0]} exited:\n{logs[dead[0]].read_text()[-3000:]}"
            time.sleep(2)
        text = "\n".join(f"--- {log.name}\n{log.read_text()[-2500:]}" for log in logs)
        assert procs[2].poll() == 0, f"train --now failed:\n{text}"
        assert len(published) >= 3, f"{len(published)} versions published by three runs:\n{text}"

        versions = [mv.version for mv in published]
        assert versions == list(range(2, 2 + len(published))), versions
        uris = [mv.artifact_uri for mv in published]
        assert len(set(uris)) == len(uris), f"two records share an artifact: {uris}"
        store = FsspecArtifactStore(artifacts.as_uri())
        for mv in published:
            fetch_trusted(store, mv)  # raises ArtifactRejected if a file was overwritten
        assert "Traceback" not in text, text
        print(f"\nthree racing runs published v{versions[0]}-v{versions[-1]}, all verify")

        for p in procs[:2]:
            p.send_signal(signal.SIGTERM)
        for i, p in enumerate(procs[:2]):
            assert p.wait(timeout=90) == 0, logs[i].read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
