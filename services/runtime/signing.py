"""ed25519 signatures over a model artifact's sha256, so consumers can refuse forged versions."""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class SignatureError(RuntimeError):
    """A version is unsigned, or its signature does not match the configured public key."""


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


def key_id(public_pem: bytes | str | Path) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its raw bytes."""
    key = serialization.load_pem_public_key(_read(public_pem))
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the public key is not an ed25519 key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()[:16]


def sign(private_pem: bytes | str | Path, sha256_hex: str) -> bytes:
    """Signature over the artifact digest (hex, lower case)."""
    key = serialization.load_pem_private_key(_read(private_pem), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("the signing key is not an ed25519 private key")
    return key.sign(sha256_hex.lower().encode("ascii"))


def verify(public_pem: bytes | str | Path, sha256_hex: str, signature: bytes | None) -> None:
    """Raise SignatureError unless `signature` signs the digest with the given public key."""
    if not signature:
        raise SignatureError("version is unsigned but a public key is configured")
    key = serialization.load_pem_public_key(_read(public_pem))
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the public key is not an ed25519 key")
    try:
        key.verify(signature, sha256_hex.lower().encode("ascii"))
    except InvalidSignature as exc:
        raise SignatureError("signature does not match the configured public key") from exc
