"""Promote and roll back: the champion pointer moves, the replaced champion is retired."""

from __future__ import annotations

from driftline.schemas import codec
from driftline.schemas.messages import (
    STATUS_CHAMPION,
    STATUS_REJECTED,
    STATUS_RETIRED,
    Lineage,
    ModelVersion,
)
from driftline.services.runtime.registry import RegistrySnapshot, records_for, rollback_target

NAME = "insulator-sensor"


def version(v: int, status: str) -> ModelVersion:
    return ModelVersion(
        name=NAME,
        version=v,
        modality="sensor",
        artifact_uri=f"file:///a/v{v}/model.onnx",
        sha256="0" * 64,
        inputs=[],
        outputs=[],
        classes=["a"],
        lineage=Lineage(source="s"),
        status=status,
        created_time_ms=v,
    )


def fold(snapshot: RegistrySnapshot, mv: ModelVersion) -> None:
    for key, record in records_for(mv, snapshot.champions.get(mv.name)):
        snapshot.apply(key, codec.encode(record))


def test_a_new_champion_moves_the_pointer_and_retires_the_old_one() -> None:
    snap = RegistrySnapshot()
    fold(snap, version(1, STATUS_CHAMPION))
    fold(snap, version(2, STATUS_REJECTED))
    assert snap.champions[NAME].version == 1
    fold(snap, version(3, STATUS_CHAMPION))
    assert snap.champions[NAME].version == 3
    statuses = {v: mv.status for v, mv in snap.versions[NAME].items()}
    assert statuses == {1: STATUS_RETIRED, 2: STATUS_REJECTED, 3: STATUS_CHAMPION}


def test_rollback_goes_back_one_served_version_at_a_time() -> None:
    snap = RegistrySnapshot()
    assert rollback_target(snap, NAME) is None
    for v, status in [(1, STATUS_CHAMPION), (2, STATUS_CHAMPION), (3, STATUS_REJECTED)]:
        fold(snap, version(v, status))
    fold(snap, version(4, STATUS_CHAMPION))
    target = rollback_target(snap, NAME)
    assert target is not None
    assert target.version == 2, "the rejected v3 never served, so it is skipped"
    fold(snap, version(2, STATUS_CHAMPION))
    assert snap.versions[NAME][4].status == STATUS_RETIRED
    again = rollback_target(snap, NAME)
    assert again is not None
    assert again.version == 1
    fold(snap, version(1, STATUS_CHAMPION))
    assert rollback_target(snap, NAME) is None
