"""Signatures: a signed digest verifies; unsigned, altered or foreign-signed versions do not."""

from __future__ import annotations

import pytest

from driftline.services.runtime.signing import (
    SignatureError,
    generate_keypair,
    key_id,
    sign,
    verify,
)

DIGEST = "ab" * 32


def test_sign_and_verify() -> None:
    private, public = generate_keypair()
    sig = sign(private, DIGEST)
    verify(public, DIGEST, sig)
    verify(public.decode(), DIGEST.upper(), sig)
    assert len(key_id(public)) == 16


@pytest.mark.parametrize("case", ["unsigned", "other digest", "other key"])
def test_refusals(case: str) -> None:
    private, public = generate_keypair()
    other_private, _ = generate_keypair()
    sig = {
        "unsigned": None,
        "other digest": sign(private, "cd" * 32),
        "other key": sign(other_private, DIGEST),
    }[case]
    with pytest.raises(SignatureError):
        verify(public, DIGEST, sig)
