"""Errors raised while starting the local stack."""

from __future__ import annotations


class PrerequisiteMissing(RuntimeError):
    """A tool the local stack needs (Java, Maven, redis-server) is not installed."""


class PortInUseError(RuntimeError):
    """A port the stack wants to listen on is already taken by another process."""


class StackStartError(RuntimeError):
    """Kafka or Redis exited early or did not become ready in time."""
