"""The artifact store: immutable model files at fsspec URIs (file:// by default, s3:// too)."""

from __future__ import annotations

import hashlib
from typing import Protocol

import fsspec


class ArtifactError(RuntimeError):
    """An artifact that is missing, unreadable or not what its record says."""


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
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"cannot read artifact {uri}: {exc}") from exc
        return data


def fetch_verified(store: ArtifactStore, uri: str, expected_sha256: str) -> bytes:
    """The artifact's bytes, only if their sha256 matches the registry record."""
    data = store.get(uri)
    actual = sha256_hex(data)
    if actual != expected_sha256.lower():
        raise ArtifactError(
            f"sha256 mismatch for {uri}: record says {expected_sha256}, file is {actual}"
        )
    return data
