"""A training run: gate, export, sign and publish in that order, and nothing on any failure."""

from __future__ import annotations

import uuid
from typing import Any

import fsspec
import numpy as np
import pytest
import torch

from driftline.schemas.contracts import (
    IMAGE_INPUT_NAME,
    INSULATOR_CLASSES,
    MODEL_NAMES,
    SENSOR_INPUT_NAME,
)
from driftline.schemas.messages import STATUS_CHAMPION, STATUS_REJECTED, STATUS_RETIRED
from driftline.services.runtime.artifacts import ArtifactError, FsspecArtifactStore, fetch_trusted
from driftline.services.runtime.signing import generate_keypair, key_id, verify
from driftline.services.simulator.fleet import labelled_dataset
from driftline.services.simulator.images import labelled_images
from driftline.trainer.dataset import LabelledSet
from driftline.trainer.export import onnx_probabilities
from driftline.trainer.fit import fit
from driftline.trainer.publish import MemoryRegistryWriter
from driftline.trainer.runs import (
    OUTCOME_FAILED,
    OUTCOME_OOM,
    OUTCOME_PROMOTED,
    OUTCOME_REJECTED,
    TrainingRun,
)
from driftline.trainer.settings import TrainerSettings

SENSOR = MODEL_NAMES["sensor"]


def settings(root: str, **kw: Any) -> TrainerSettings:
    base: dict[str, Any] = {
        "artifact_root": root,
        "epochs": 2,
        "device": "cpu",
        "min_holdout": 20,
        "gate_margin": 0.0,
        "gate_min_score": 0.0,
        "image_width": 4,
    }
    base.update(kw)
    return TrainerSettings(**base)


@pytest.fixture
def root() -> str:
    return f"memory://driftline-test-{uuid.uuid4().hex[:8]}"


def sensor_data(n: int = 400, seed: int = 1) -> LabelledSet:
    x, y = labelled_dataset(n, seed)
    n_part = 3
    return LabelledSet(
        x=x,
        y=y,
        event_time_ms=np.arange(n, dtype=np.int64) * 1000,
        partitions=np.arange(n, dtype=np.int64) % n_part,
        offsets=np.arange(n, dtype=np.int64) // n_part + 100,
    )


def test_a_first_run_publishes_a_signed_verified_champion_with_lineage(root: str) -> None:
    private, public = generate_keypair()
    reg = MemoryRegistryWriter()
    run = TrainingRun(settings(root, signing_key=private.decode()), reg, FsspecArtifactStore(root))
    data = sensor_data()
    out = run.run("sensor", data, source="t.training.windows", trigger="manual")
    assert out.outcome == OUTCOME_PROMOTED, out.error
    mv = out.version
    assert mv is not None
    assert (mv.name, mv.version, mv.status) == (SENSOR, 1, STATUS_CHAMPION)
    assert reg.snapshot.champions[SENSOR].version == 1
    onnx = fetch_trusted(FsspecArtifactStore(root), mv)
    verify(public, mv)
    assert mv.signing_key_id == key_id(public)
    assert mv.weights_uri is not None
    assert mv.weights_uri.endswith(".safetensors")
    assert [(s.name, s.dtype, s.shape) for s in mv.inputs] == [
        (SENSOR_INPUT_NAME, "float32", [-1, 4, 64])
    ]
    assert mv.outputs[0].shape == [-1, len(INSULATOR_CLASSES)]
    assert mv.metrics["parity_max_abs_diff"] <= 1e-4
    assert mv.metrics["holdout_examples"] == 80
    assert mv.lineage.source == "t.training.windows"
    assert {(r.partition, r.start_offset, r.end_offset) for r in mv.lineage.ranges} == {
        (p, 100, 100 + len(range(p, 400, 3))) for p in range(3)
    }
    assert mv.reference is not None
    names = {f.name for f in mv.reference.features}
    assert "confidence" in names
    assert "partial_discharge_pc.max" in names
    # The recorded holdout score is the exported graph's, as consumers run it.
    probs = onnx_probabilities(onnx, sensor_data().x[-80:])
    assert probs.shape == (80, 4)


def test_the_gate_compares_both_models_on_one_holdout_and_records_both(root: str) -> None:
    reg = MemoryRegistryWriter()
    store = FsspecArtifactStore(root)
    first = TrainingRun(settings(root), reg, store).run(
        "sensor", sensor_data(seed=1), source="s", trigger="manual"
    )
    assert first.outcome == OUTCOME_PROMOTED

    strict = TrainingRun(settings(root, gate_margin=0.9), reg, store)
    second = strict.run("sensor", sensor_data(seed=2), source="s", trigger="new_labels")
    assert second.outcome == OUTCOME_REJECTED
    assert second.version is not None
    m = second.version.metrics
    assert second.version.status == STATUS_REJECTED
    assert "champion_holdout_macro_f1" in m
    assert "holdout_macro_f1" in m
    assert m["champion_version"] == 1
    assert m["warm_start"] == 1.0, "the challenger starts from the champion's weights"
    assert second.version.lineage.parent_version == 1
    assert reg.snapshot.champions[SENSOR].version == 1, "a rejected challenger never serves"

    lenient = TrainingRun(settings(root, gate_margin=-1.0), reg, store)
    third = lenient.run("sensor", sensor_data(seed=3), source="s", trigger="drift")
    assert third.outcome == OUTCOME_PROMOTED
    assert reg.snapshot.champions[SENSOR].version == 3
    assert reg.snapshot.versions[SENSOR][1].status == STATUS_RETIRED


def test_cuda_out_of_memory_fails_the_run_visibly_and_publishes_nothing(root: str) -> None:
    def out_of_memory(*_args: Any, **_kwargs: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    reg = MemoryRegistryWriter()
    run = TrainingRun(settings(root), reg, FsspecArtifactStore(root), fit_fn=out_of_memory)
    out = run.run("sensor", sensor_data(), source="s", trigger="manual")
    assert out.outcome == OUTCOME_OOM
    assert out.error is not None
    assert "out of memory" in out.error
    assert "published" not in out.summary()
    assert reg.records == []
    assert not fsspec.filesystem("memory").exists(root.removeprefix("memory://"))


def test_a_crash_mid_training_publishes_nothing(root: str) -> None:
    calls = []

    def crash_after_one_epoch(*_args: Any, **_kwargs: Any) -> Any:
        calls.append(1)
        raise RuntimeError("worker killed")

    reg = MemoryRegistryWriter()
    out = TrainingRun(
        settings(root), reg, FsspecArtifactStore(root), fit_fn=crash_after_one_epoch
    ).run("sensor", sensor_data(), source="s", trigger="manual")
    assert (out.outcome, calls, reg.records) == (OUTCOME_FAILED, [1], [])


class BrokenStore(FsspecArtifactStore):
    """Writes the ONNX file, then fails on the weights: a crash in the middle of publishing."""

    def put(self, relative_path: str, data: bytes) -> str:
        if relative_path.endswith(".safetensors"):
            raise ArtifactError("disk full")
        return super().put(relative_path, data)


def test_a_crash_mid_publish_leaves_the_registry_on_the_last_good_version(root: str) -> None:
    reg = MemoryRegistryWriter()
    good = TrainingRun(settings(root), reg, FsspecArtifactStore(root)).run(
        "sensor", sensor_data(seed=1), source="s", trigger="manual"
    )
    assert good.outcome == OUTCOME_PROMOTED
    records = list(reg.records)
    broken = TrainingRun(settings(root, gate_margin=-1.0), reg, BrokenStore(root))
    out = broken.run("sensor", sensor_data(seed=2), source="s", trigger="manual")
    assert out.outcome == OUTCOME_FAILED
    assert out.error is not None
    assert "disk full" in out.error
    assert reg.records == records
    assert reg.snapshot.champions[SENSOR].version == 1


def test_a_tampered_champion_is_neither_scored_nor_learned_from_nor_bypassed(root: str) -> None:
    reg = MemoryRegistryWriter()
    store = FsspecArtifactStore(root)
    first = TrainingRun(settings(root), reg, store).run(
        "sensor", sensor_data(seed=1), source="s", trigger="manual"
    )
    assert first.version is not None
    with fsspec.open(first.version.artifact_uri, "ab") as f:
        f.write(b"tampered")
    out = TrainingRun(settings(root), reg, store).run(
        "sensor", sensor_data(seed=2), source="s", trigger="manual"
    )
    assert out.version is not None
    assert out.version.metrics["warm_start"] == 0.0
    assert "champion_holdout_macro_f1" not in out.version.metrics
    # With nothing to compare against, the gate does not promote on the challenger's own
    # score; the version is published as rejected, with the reason, for an operator to judge.
    assert out.outcome == OUTCOME_REJECTED
    assert out.version.status == STATUS_REJECTED
    assert out.version.metrics["gate_champion_unusable"] == 1.0
    assert out.challenger is not None
    assert "could not be scored" in out.challenger.decision.reason
    assert "v1" in out.challenger.decision.reason
    assert reg.snapshot.champions[SENSOR].version == 1


def test_the_image_model_trains_exports_and_publishes(root: str) -> None:
    photos, y = labelled_images(160, seed=4)
    data = LabelledSet.from_arrays(np.ascontiguousarray(photos.transpose(0, 3, 1, 2)), y)
    reg = MemoryRegistryWriter()
    out = TrainingRun(settings(root, epochs=1), reg, FsspecArtifactStore(root)).run(
        "image", data, source="s", trigger="manual", record_offsets=False
    )
    assert out.version is not None, out.error
    mv = out.version
    assert mv.name == MODEL_NAMES["image"]
    assert [(s.name, s.shape) for s in mv.inputs] == [(IMAGE_INPUT_NAME, [-1, 3, 64, 64])]
    assert mv.metrics["parity_max_abs_diff"] <= 1e-4
    assert mv.lineage.ranges == []


def test_training_is_seeded() -> None:
    x, y = labelled_dataset(200, 5)
    from driftline.trainer.fit import FitConfig
    from driftline.trainer.retrain import new_model

    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        model = new_model("sensor")
        report = fit(model, x[:160], y[:160], x[160:], y[160:], 4, FitConfig(epochs=1, seed=3))
        losses.append(report.epochs[0].loss)
    assert losses[0] == losses[1]
