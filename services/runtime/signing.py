"""ed25519 signatures over a model version's record, so consumers can refuse forged versions.

What is signed is `signed_payload(mv)`: every field of a ModelVersion that a consumer acts on,
as canonical bytes, so a registry writer without the private key can neither swap the artifact
nor re-map its labels, modality, name, version or I/O signature on a validly signed record.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from driftline.schemas.messages import ModelVersion, TensorSpec

# Domain separation and the payload's format version: a signature made for anything else (or
# for a later format) never verifies as one of these, and vice versa.
PAYLOAD_PREFIX = b"driftline-model-v1\n"


class SignatureError(RuntimeError):
    """A version is unsigned, or its signature does not match the configured public key."""


def _tensor(spec: TensorSpec) -> dict[str, object]:
    return {"dtype": spec.dtype, "name": spec.name, "shape": list(spec.shape)}


def signed_payload(mv: ModelVersion) -> bytes:
    """The canonical bytes a version's signature covers.

    Format (v1): PAYLOAD_PREFIX, then the compact UTF-8 JSON (msgspec, object keys sorted, no
    whitespace) of exactly these fields:

        classes   list of str, in order (the index of a class is its output column)
        inputs    list of {"dtype", "name", "shape"}, in order
        modality  str
        name      str
        outputs   list of {"dtype", "name", "shape"}, in order
        sha256    str, the artifact digest in lower-case hex
        version   int

    Not covered, so they can change without re-signing: `status` (promote and rollback
    re-publish a record with a new status), `lineage`, `metrics`, `reference` and
    `created_time_ms` (informational), `schema_version` (the encoding, not the model),
    `signature` and `signing_key_id` themselves, and the URIs: `artifact_uri` only says where
    the bytes are, which the covered sha256 pins, and `weights_uri` is only used when the
    weights reproduce the verified graph's outputs (trainer/champion.py).
    """
    fields = {
        "classes": list(mv.classes),
        "inputs": [_tensor(s) for s in mv.inputs],
        "modality": mv.modality,
        "name": mv.name,
        "outputs": [_tensor(s) for s in mv.outputs],
        "sha256": mv.sha256.lower(),
        "version": mv.version,
    }
    return PAYLOAD_PREFIX + msgspec.json.encode(fields, order="sorted")


def generate_keypair() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a fresh ed25519 key."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def _read(pem_or_path: bytes | str | Path) -> bytes:
    if isinstance(pem_or_path, bytes):
        return pem_or_path
    text = str(pem_or_path)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    return Path(text).read_bytes()


def _public_key(public_pem: bytes | str | Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(_read(public_pem))
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the public key is not an ed25519 key")
    return key


def key_id(public_pem: bytes | str | Path) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its raw bytes."""
    raw = _public_key(public_pem).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return raw.hex()[:16]


def sign(private_pem: bytes | str | Path, mv: ModelVersion) -> bytes:
    """Signature over `signed_payload(mv)`; set it as the record's `signature`."""
    key = serialization.load_pem_private_key(_read(private_pem), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("the signing key is not an ed25519 private key")
    return key.sign(signed_payload(mv))


def _signs_digest_only(key: Ed25519PublicKey, mv: ModelVersion, signature: bytes) -> bool:
    """Whether `signature` is the pre-v1 format: over the artifact's sha256 hex alone."""
    try:
        key.verify(signature, mv.sha256.lower().encode("ascii"))
    except (InvalidSignature, UnicodeEncodeError):
        return False
    return True


def verify(public_pem: bytes | str | Path, mv: ModelVersion) -> None:
    """Raise SignatureError unless `mv.signature` signs `signed_payload(mv)` with the key.

    A record signed by an older driftline (over the artifact digest only) is refused too: that
    signature leaves the labels, modality and I/O signature open to change, so the message
    says to re-publish the version with a current trainer rather than accept it.
    """
    if not mv.signature:
        raise SignatureError("version is unsigned but a public key is configured")
    key = _public_key(public_pem)
    try:
        key.verify(mv.signature, signed_payload(mv))
    except InvalidSignature as exc:
        if _signs_digest_only(key, mv, mv.signature):
            raise SignatureError(
                "signed by an older driftline over the artifact digest only (not its name, "
                "version, modality, classes and I/O signature); re-publish it with a current "
                "driftline trainer"
            ) from exc
        raise SignatureError("signature does not match the configured public key") from exc
