"""The artifact store: immutable model files at fsspec URIs (file:// by default, s3:// too)."""

from __future__ import annotations

import hashlib
from typing import Protocol

import fsspec

from driftline.schemas.messages import ModelVersion
from driftline.services.runtime.signing import SignatureError, verify

# Why a version's artifact is refused (bounded: they label metrics).
REJECT_FETCH = "fetch"
REJECT_DIGEST = "sha256"
REJECT_SIGNATURE = "signature"


class ArtifactError(RuntimeError):
    """An artifact that is missing, unreadable or not what its record says."""


class ArtifactRejected(ArtifactError):
    """A version's artifact that must not be used; `reason` is one of the REJECT_* codes."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ArtifactStore(Protocol):
    def put(self, relative_path: str, data: bytes) -> str: ...
    def get(self, uri: str) -> bytes: ...


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FsspecArtifactStore:
    """Writes under a root URI; reads any fsspec URI."""

    def __init__(self, root_uri: str) -> None:
        self.root_uri = root_uri.rstrip("/")

    def put(self, relative_path: str, data: bytes) -> str:
        """Write, then read back and compare, so a published record never points at a torn file."""
        uri = f"{self.root_uri}/{relative_path.lstrip('/')}"
        fs, path = fsspec.core.url_to_fs(uri)
        parent = path.rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}.partial"
        with fs.open(tmp, "wb") as out:
            out.write(data)
        fs.mv(tmp, path)
        if sha256_hex(self.get(uri)) != sha256_hex(data):
            raise ArtifactError(f"{uri} reads back different bytes than were written")
        return uri

    def get(self, uri: str) -> bytes:
        try:
            with fsspec.open(uri, "rb") as src:
                data: bytes = src.read()
        except Exception as exc:  # an unknown scheme, a missing fsspec backend, I/O errors
            raise ArtifactError(f"cannot read artifact {uri}: {exc}") from exc
        return data


def fetch_trusted(store: ArtifactStore, mv: ModelVersion, public_key: str | None = None) -> bytes:
    """A version's ONNX bytes, checked the one way every reader checks them.

    Bytes first, then their sha256 against the record, then (when a public key is
    configured) the record's signature over every field a consumer acts on (name, version,
    modality, classes, sha256, inputs and outputs: `signing.signed_payload`). Raises
    ArtifactRejected.
    """
    try:
        data = store.get(mv.artifact_uri)
    except ArtifactError as exc:
        raise ArtifactRejected(REJECT_FETCH, str(exc)) from exc
    actual = sha256_hex(data)
    if actual != mv.sha256.lower():
        raise ArtifactRejected(
            REJECT_DIGEST,
            f"sha256 mismatch for {mv.artifact_uri}: record says {mv.sha256}, file is {actual}",
        )
    if public_key is not None:
        try:
            verify(public_key, mv)
        except (SignatureError, ValueError) as exc:
            raise ArtifactRejected(REJECT_SIGNATURE, f"{mv.name} v{mv.version}: {exc}") from exc
    return data
