"""Publish a model version without torch: store the ONNX file, sign, write the registry record.

The trainer (trainer/publish.py) and `driftline models publish` share this path, so a version
trained here and one trained elsewhere are written, signed and leased the same way. The order
is what keeps the registry safe: the artifacts are written and read back first, the signature
is checked against its own public key, and only then is the ModelVersion record committed. A
crash before the record leaves orphaned files (in a folder of their own, never reused) and the
registry on its last good version.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import msgspec
from confluent_kafka import KafkaError, KafkaException, Producer
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.messages import (
    STATUS_CHAMPION,
    Lineage,
    ModelVersion,
    ReferenceProfile,
    TensorSpec,
)
from driftline.services.runtime import registry
from driftline.services.runtime.artifacts import ArtifactStore, sha256_hex
from driftline.services.runtime.kafka import producer
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.runtime.signing import key_id, sign, verify

TOPIC_WAIT_S = 10.0
PUBLISH_ATTEMPTS = 8


class RegistryWriter(Protocol):
    """Where version records go: the models.registry topic, or an in-memory twin in tests."""

    def champion(self, name: str) -> ModelVersion | None: ...
    def next_version(self, name: str) -> int: ...
    def publish(self, mv: ModelVersion) -> None: ...


class RegistryConflict(RuntimeError):
    """Another publisher of the same model took the publish lease: read the registry again."""


class LeaseRefused(RegistryConflict):
    """The broker refused this principal the publish lease (ACLs, or ACLs not yet in force)."""


def lease_id(kafka: KafkaSettings, name: str) -> str:
    """The transactional id every publisher of `name` in this deployment shares."""
    return f"{kafka.topic_prefix}driftline-registry-{name}"


FENCED = (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)
NOT_AUTHORIZED = (
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
)


class KafkaRegistryWriter:
    """Records on models.registry; a champion also moves the pointer and retires the old one.

    One publisher per model at a time, however many trainers, `train --now` and `models
    publish` runs there are: every publisher of a model shares one transactional id
    (`lease_id`), and taking it (init_transactions) fences whoever held it and settles their
    open transaction. The next version number is read after taking it, and the records are
    written in one transaction with it, so a publisher that lost the lease in between cannot
    commit: its publish raises RegistryConflict and the caller reads the registry again.
    Version numbers never collide, and artifact paths carry a unique suffix, so no two
    publishers ever write the same file.
    """

    def __init__(self, kafka: KafkaSettings, timeout_s: float = 30.0) -> None:
        self.kafka = kafka
        self.topic = kafka.topics.models_registry
        self.timeout_s = timeout_s
        self._leases: dict[str, Producer] = {}

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

    def _lease(self, name: str) -> Producer:
        prod = self._leases.get(name)
        if prod is None:
            prod = producer(
                self.kafka,
                **{
                    "transactional.id": lease_id(self.kafka, name),
                    "transaction.timeout.ms": int(max(self.timeout_s * 2, 60) * 1000),
                },
            )
            try:
                prod.init_transactions(self.timeout_s)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() in NOT_AUTHORIZED:
                    raise LeaseRefused(
                        f"may not take the publish lease of {name}: grant this principal "
                        f"Write and Describe on transactional ids prefixed "
                        f"{lease_id(self.kafka, '')!r} (docs/operations.md): {err}"
                    ) from exc
                raise
            self._leases[name] = prod
        return prod

    def champion(self, name: str) -> ModelVersion | None:
        return self._snapshot().champions.get(name)

    def next_version(self, name: str) -> int:
        # Without the lease: the artifacts are built and written first (seconds), and only
        # then is the lease taken, for a read and a commit (publish). Holding it through the
        # build made racing publishers fence each other until they ran out of attempts.
        return self._snapshot().latest_version(name) + 1

    def publish(self, mv: ModelVersion) -> None:
        prod = self._lease(mv.name)
        # With the lease held, no one else commits until this commit or until someone fences
        # it (then the commit fails): the version is checked against this read.
        snapshot = self._snapshot()
        if snapshot.latest_version(mv.name) + 1 != mv.version:
            raise RegistryConflict(
                f"{mv.name} v{mv.version} was published by another publisher meanwhile"
            )
        previous = snapshot.champions.get(mv.name)
        records = (
            registry.records_for(mv, previous)
            if mv.status == STATUS_CHAMPION
            else [(registry.version_key(mv.name, mv.version), mv)]
        )
        try:
            prod.begin_transaction()
            for key, record in records:
                prod.produce(self.topic, key=key, value=codec.encode(record), headers=h.AVRO)
            prod.commit_transaction(self.timeout_s)
        except KafkaException as exc:
            self._leases.pop(mv.name, None)
            err = exc.args[0] if exc.args else None
            with contextlib.suppress(KafkaException):
                prod.abort_transaction(5.0)
            if isinstance(err, KafkaError) and err.code() in FENCED:
                raise RegistryConflict(
                    f"{mv.name} v{mv.version}: another publisher took the lease ({err})"
                ) from exc
            raise

    def close(self) -> None:
        for prod in self._leases.values():
            prod.flush(5.0)
        self._leases.clear()


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


def private_pem(signing_key: SecretStr | str | Path) -> bytes:
    """The private key's PEM: the key itself (a SecretStr or PEM text), or a file holding it."""
    text = (
        signing_key.get_secret_value() if isinstance(signing_key, SecretStr) else str(signing_key)
    )
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    return Path(text).expanduser().read_bytes()


def public_pem_of(private: bytes) -> bytes:
    key = serialization.load_pem_private_key(private, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signing_keys(signing_key: SecretStr | str | Path | None) -> tuple[bytes, bytes, str] | None:
    """(private PEM, public PEM, key id), or None without a key; raises on a bad key."""
    if signing_key is None:
        return None
    private = private_pem(signing_key)
    public = public_pem_of(private)
    return private, public, key_id(public)


def build_record(
    *,
    store: ArtifactStore,
    name: str,
    version: int,
    modality: str,
    onnx_bytes: bytes,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    classes: list[str],
    metrics: dict[str, float],
    lineage: Lineage,
    status: str,
    weights: bytes | None = None,
    signing_key: SecretStr | str | Path | None = None,
    reference: ReferenceProfile | None = None,
) -> ModelVersion:
    """Write and verify <name>/v<version>-<unique>/{model.onnx, weights.safetensors}; sign.

    Nothing is published here: the caller publishes the returned record only after this
    returns, so every record on the registry points at artifacts that were read back intact.
    The signature covers the record's name, version, modality, classes, sha256 and I/O
    signature (`signing.signed_payload`), not its status, so a promote or rollback that only
    re-publishes it with another status keeps it valid.
    """
    digest = sha256_hex(onnx_bytes)
    # The key is read (and must be ed25519) before anything is written: a bad key fails the
    # run with no files.
    keys = signing_keys(signing_key)
    # A unique folder per build: two publishers racing for one version number never write
    # the same file (the loser's files are orphans, its record is never committed).
    folder = f"{name}/v{version}-{uuid.uuid4().hex[:12]}"
    onnx_uri = store.put(f"{folder}/model.onnx", onnx_bytes)
    weights_uri = (
        store.put(f"{folder}/weights.safetensors", weights) if weights is not None else None
    )
    mv = ModelVersion(
        name=name,
        version=version,
        modality=modality,
        artifact_uri=onnx_uri,
        sha256=digest,
        weights_uri=weights_uri,
        inputs=inputs,
        outputs=outputs,
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


def conflict_backoff_s(attempt: int) -> float:
    """The wait before attempt `attempt` + 2 after a conflict: doubling from 0.25 s up to 8 s,
    with jitter, so racing publishers fall out of step instead of colliding again."""
    return float(min(8.0, 0.25 * 2.0**attempt) * random.uniform(0.5, 1.5))


def publish_next(
    writer: RegistryWriter, name: str, build: Callable[[int], ModelVersion]
) -> ModelVersion:
    """Publish `build(next version)`, reading the next version again whenever another
    publisher took the lease in between (RegistryConflict); a refused lease is not retried."""
    for attempt in range(PUBLISH_ATTEMPTS):
        mv = build(writer.next_version(name))
        try:
            writer.publish(mv)
        except LeaseRefused:
            raise
        except RegistryConflict:
            if attempt == PUBLISH_ATTEMPTS - 1:
                raise
            time.sleep(conflict_backoff_s(attempt))  # let the other one finish
            continue
        return mv
    raise AssertionError("unreachable")
