"""Publish a trained model version: its ONNX graph and its torch weights, signed, then the record.

Everything but the weights is torch-free and lives in `services/runtime/publishing.py`, shared
with `driftline models publish`: the registry writers and their publish lease, the signing key,
and the order that keeps the registry safe (artifacts written and read back, the signature
checked against its own public key, only then the record).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from safetensors.torch import save as save_safetensors
from torch import nn

from driftline.schemas.messages import Lineage, ModelVersion, ReferenceProfile
from driftline.services.runtime.artifacts import ArtifactStore, FsspecArtifactStore
from driftline.services.runtime.publishing import (
    FENCED,
    NOT_AUTHORIZED,
    TOPIC_WAIT_S,
    KafkaRegistryWriter,
    LeaseRefused,
    MemoryRegistryWriter,
    RegistryConflict,
    RegistryWriter,
    build_record,
    lease_id,
    public_pem_of,
)
from driftline.services.runtime.settings import KafkaSettings
from driftline.trainer.export import ExportedModel

__all__ = [
    "FENCED",
    "NOT_AUTHORIZED",
    "TOPIC_WAIT_S",
    "KafkaRegistryWriter",
    "LeaseRefused",
    "MemoryRegistryWriter",
    "RegistryConflict",
    "RegistryWriter",
    "build_version",
    "lease_id",
    "public_pem_of",
    "publish_version",
    "weights_bytes",
]


def weights_bytes(model: nn.Module) -> bytes:
    """The model's state as safetensors (never pickle)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data: bytes = save_safetensors(state)
    return data


def build_version(
    *,
    store: ArtifactStore,
    name: str,
    version: int,
    modality: str,
    exported: ExportedModel,
    model: nn.Module,
    classes: list[str],
    metrics: dict[str, float],
    lineage: Lineage,
    status: str,
    signing_key: SecretStr | str | Path | None = None,
    reference: ReferenceProfile | None = None,
) -> ModelVersion:
    """Write and verify <name>/v<version>-<unique>/{model.onnx, weights.safetensors}; sign.

    Nothing is published here (see `publishing.build_record`): the caller publishes the
    returned record only after this returns.
    """
    return build_record(
        store=store,
        name=name,
        version=version,
        modality=modality,
        onnx_bytes=exported.onnx_bytes,
        inputs=exported.inputs,
        outputs=exported.outputs,
        classes=classes,
        metrics=metrics,
        lineage=lineage,
        status=status,
        weights=weights_bytes(model),
        signing_key=signing_key,
        reference=reference,
    )


def publish_version(
    *,
    kafka: KafkaSettings,
    artifact_root: str,
    name: str,
    version: int,
    modality: str,
    exported: ExportedModel,
    model: nn.Module,
    classes: list[str],
    metrics: dict[str, float],
    lineage: Lineage,
    status: str,
    signing_key: SecretStr | str | Path | None = None,
    reference: ReferenceProfile | None = None,
) -> ModelVersion:
    """Store the artifacts under <root>/<name>/v<version>-<unique>/, then publish the record."""
    mv = build_version(
        store=FsspecArtifactStore(artifact_root),
        name=name,
        version=version,
        modality=modality,
        exported=exported,
        model=model,
        classes=classes,
        metrics=metrics,
        lineage=lineage,
        status=status,
        signing_key=signing_key,
        reference=reference,
    )
    KafkaRegistryWriter(kafka).publish(mv)
    return mv
