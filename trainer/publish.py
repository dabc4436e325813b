"""Publish a model version: write and verify the artifacts, sign, then the registry record.

The order is what keeps the registry safe: the ONNX file and the weights are written and read
back first, the signature is checked against its own public key, and only then is the
ModelVersion record produced and acknowledged. A crash before the record leaves orphaned files
(overwritten by the next run, which reuses the version number) and the registry on its last
good version.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import msgspec
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr
from safetensors.torch import save as save_safetensors
from torch import nn

from driftline.schemas import codec
from driftline.schemas.messages import (
    STATUS_CHAMPION,
    Lineage,
    ModelVersion,
    ReferenceProfile,
)
from driftline.services.runtime import registry
from driftline.services.runtime.artifacts import ArtifactStore, FsspecArtifactStore, sha256_hex
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.runtime.signing import key_id, sign, verify
from driftline.trainer.export import ExportedModel

TOPIC_WAIT_S = 10.0


class RegistryWriter(Protocol):
    """Where version records go: the models.registry topic, or an in-memory twin in tests."""

    def champion(self, name: str) -> ModelVersion | None: ...
    def next_version(self, name: str) -> int: ...
    def publish(self, mv: ModelVersion) -> None: ...


class KafkaRegistryWriter:
    """Records on models.registry; a champion also moves the pointer and retires the old one."""

    def __init__(self, kafka: KafkaSettings, timeout_s: float = 30.0) -> None:
        self.kafka = kafka
        self.topic = kafka.topics.models_registry
        self.timeout_s = timeout_s

    def _snapshot(self) -> registry.RegistrySnapshot:
        # A topic created a moment ago may not be in every broker's metadata yet: retry briefly.
        deadline = time.monotonic() + TOPIC_WAIT_S
        while True:
            try:
                return registry.read_snapshot(self.kafka, self.topic, timeout_s=self.timeout_s)
            except RuntimeError as exc:
                if "not found" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def champion(self, name: str) -> ModelVersion | None:
        return self._snapshot().champions.get(name)

    def next_version(self, name: str) -> int:
        return self._snapshot().latest_version(name) + 1

    def publish(self, mv: ModelVersion) -> None:
        if mv.status != STATUS_CHAMPION:
            registry.publish(self.kafka, self.topic, mv)
            return
        registry.promote(self.kafka, self.topic, mv, self.champion(mv.name))


class MemoryRegistryWriter:
    """The in-memory twin: the same records, folded into a RegistrySnapshot by the same code."""

    def __init__(self) -> None:
        self.snapshot = registry.RegistrySnapshot()
        self.records: list[tuple[str, ModelVersion]] = []

    def champion(self, name: str) -> ModelVersion | None:
        return self.snapshot.champions.get(name)

    def next_version(self, name: str) -> int:
        return self.snapshot.latest_version(name) + 1

    def publish(self, mv: ModelVersion) -> None:
        previous = self.snapshot.champions.get(mv.name)
        for key, record in registry.records_for(mv, previous):
            self.records.append((key, record))
            self.snapshot.apply(key, codec.encode(record))


def weights_bytes(model: nn.Module) -> bytes:
    """The model's state as safetensors (never pickle)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data: bytes = save_safetensors(state)
    return data


def _private_pem(signing_key: SecretStr | str | Path) -> bytes:
    text = (
        signing_key.get_secret_value() if isinstance(signing_key, SecretStr) else str(signing_key)
    )
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    return Path(text).expanduser().read_bytes()


def public_pem_of(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


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
    """Write and verify <name>/v<version>/{model.onnx, weights.safetensors}; sign; the record.

    Nothing is published here: the caller publishes the returned record only after this
    returns, so every record on the registry points at artifacts that were read back intact.
    The signature covers the record's name, version, modality, classes, sha256 and I/O
    signature (`signing.signed_payload`), not its status, so a promote or rollback that only
    re-publishes it with another status keeps it valid.
    """
    digest = sha256_hex(exported.onnx_bytes)
    # The key is read (and must be ed25519) before anything is written: a bad key fails the
    # run with no files.
    keys: tuple[bytes, bytes, str] | None = None
    if signing_key is not None:
        private = _private_pem(signing_key)
        public = public_pem_of(private)
        keys = (private, public, key_id(public))
    onnx_uri = store.put(f"{name}/v{version}/model.onnx", exported.onnx_bytes)
    weights_uri = store.put(f"{name}/v{version}/weights.safetensors", weights_bytes(model))
    mv = ModelVersion(
        name=name,
        version=version,
        modality=modality,
        artifact_uri=onnx_uri,
        sha256=digest,
        weights_uri=weights_uri,
        inputs=exported.inputs,
        outputs=exported.outputs,
        classes=classes,
        metrics=metrics,
        lineage=lineage,
        status=status,
        created_time_ms=int(time.time() * 1000),
        reference=reference,
    )
    if keys is None:
        return mv
    private, public, signer = keys
    signed = msgspec.structs.replace(mv, signature=sign(private, mv), signing_key_id=signer)
    verify(public, signed)
    return signed


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
    """Store the artifacts under <root>/<name>/v<version>/, then publish the record to Kafka."""
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
