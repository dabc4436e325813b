"""Signatures: a signed record verifies; unsigned, altered or foreign-signed versions do not."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from driftline.schemas.contracts import INSULATOR_CLASSES
from driftline.schemas.messages import (
    STATUS_CHALLENGER,
    STATUS_CHAMPION,
    STATUS_RETIRED,
    Lineage,
    ModelVersion,
    TensorSpec,
)
from driftline.services.runtime.artifacts import (
    REJECT_SIGNATURE,
    ArtifactRejected,
    fetch_trusted,
    sha256_hex,
)
from driftline.services.runtime.signing import (
    PAYLOAD_PREFIX,
    SignatureError,
    generate_keypair,
    key_id,
    sign,
    signed_payload,
    verify,
)

DIGEST = "ab" * 32


def record(**changes: Any) -> ModelVersion:
    mv = ModelVersion(
        name="insulator-sensor",
        version=3,
        modality="sensor",
        artifact_uri="memory://insulator-sensor/v3/model.onnx",
        sha256=DIGEST,
        inputs=[TensorSpec(name="windows", dtype="float32", shape=[-1, 4, 64])],
        outputs=[TensorSpec(name="probs", dtype="float32", shape=[-1, len(INSULATOR_CLASSES)])],
        classes=list(INSULATOR_CLASSES),
        lineage=Lineage(source="t.training.windows"),
        status=STATUS_CHALLENGER,
        created_time_ms=1_700_000_000_000,
    )
    return msgspec.structs.replace(mv, **changes)


def signed(private: bytes, mv: ModelVersion) -> ModelVersion:
    return msgspec.structs.replace(mv, signature=sign(private, mv))


def test_sign_and_verify() -> None:
    private, public = generate_keypair()
    mv = signed(private, record())
    verify(public, mv)
    verify(public.decode(), msgspec.structs.replace(mv, sha256=DIGEST.upper()))
    assert len(key_id(public)) == 16


def test_the_payload_is_canonical_and_domain_separated() -> None:
    payload = signed_payload(record())
    assert payload.startswith(PAYLOAD_PREFIX)
    fields = msgspec.json.decode(payload.removeprefix(PAYLOAD_PREFIX))
    assert list(fields) == sorted(fields)
    assert set(fields) == {
        "classes",
        "inputs",
        "modality",
        "name",
        "outputs",
        "sha256",
        "version",
    }
    assert signed_payload(record()) == payload, "the same record, the same bytes"


@pytest.mark.parametrize("case", ["unsigned", "other record", "other key", "junk"])
def test_refusals(case: str) -> None:
    private, public = generate_keypair()
    other_private, _ = generate_keypair()
    mv = record()
    sig = {
        "unsigned": None,
        "other record": sign(private, record(version=4)),
        "other key": sign(other_private, mv),
        "junk": b"x" * 64,
    }[case]
    with pytest.raises(SignatureError):
        verify(public, msgspec.structs.replace(mv, signature=sig))


def _swapped_classes() -> list[str]:
    classes = list(INSULATOR_CLASSES)
    classes[0], classes[1] = classes[1], classes[0]
    return classes


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("classes", _swapped_classes()),
        ("modality", "image"),
        ("version", 4),
        ("name", "insulator-image"),
        ("sha256", "cd" * 32),
        ("inputs", [TensorSpec(name="windows", dtype="float32", shape=[-1, 4, 32])]),
        ("outputs", [TensorSpec(name="probs", dtype="float32", shape=[-1, 2])]),
    ],
)
def test_changing_a_covered_field_breaks_the_signature(field: str, value: object) -> None:
    private, public = generate_keypair()
    mv = signed(private, record())
    with pytest.raises(SignatureError, match="does not match"):
        verify(public, msgspec.structs.replace(mv, **{field: value}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", STATUS_CHAMPION),
        ("status", STATUS_RETIRED),
        ("metrics", {"holdout_macro_f1": 0.5}),
        ("lineage", Lineage(source="elsewhere")),
        ("created_time_ms", 1),
        ("artifact_uri", "file:///mirror/insulator-sensor/v3/model.onnx"),
    ],
)
def test_promote_and_informational_fields_keep_it_valid(field: str, value: object) -> None:
    private, public = generate_keypair()
    mv = signed(private, record())
    verify(public, msgspec.structs.replace(mv, **{field: value}))


class MemoryStore:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def put(self, relative_path: str, data: bytes) -> str:
        self.files[relative_path] = data
        return relative_path

    def get(self, uri: str) -> bytes:
        return self.files[uri]


def test_a_record_signed_over_the_digest_only_is_refused_with_a_reason() -> None:
    """A signature from before the record was covered: valid over the sha256, refused anyway."""
    private, public = generate_keypair()
    data = b"onnx bytes"
    mv = record(artifact_uri="m.onnx")
    digest = sha256_hex(data)
    key = serialization.load_pem_private_key(private, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    old = msgspec.structs.replace(mv, sha256=digest, signature=key.sign(digest.encode("ascii")))
    store = MemoryStore({"m.onnx": data})
    assert fetch_trusted(store, old) == data, "no key configured: not checked"
    with pytest.raises(ArtifactRejected, match=r"older driftline.*re-publish") as caught:
        fetch_trusted(store, old, public.decode())
    assert caught.value.reason == REJECT_SIGNATURE
    current = msgspec.structs.replace(old, signature=sign(private, old))
    assert fetch_trusted(store, current, public.decode()) == data
