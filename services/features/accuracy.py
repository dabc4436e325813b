"""Live accuracy per model version: rolling state in a changelog table, a hash per version."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.core.accuracy import AccuracySnapshot, RollingAccuracy, decode, encode
from services.features.stats import SEP
from services.features.store import ACCURACY_KEY, EVENT_TIME_FIELD, HashWrite, num
from services.features.tables import StateTable

Version = tuple[str, int]  # model name, version


def version_key(version: Version) -> bytes:
    return f"{version[0]}{SEP}{version[1]}".encode()


def parse_version_key(key: bytes) -> Version:
    name, number = key.decode().split(SEP)
    return name, int(number)


def accuracy_write(prefix: str, version: Version, snap: AccuracySnapshot, ttl_ms: int) -> HashWrite:
    """The accuracy hash of a version; newer label time, then more labels, wins."""
    model, number = version
    return HashWrite(
        ACCURACY_KEY.format(prefix=prefix, model=model, version=number),
        ((EVENT_TIME_FIELD, snap.window_end_ms), ("lifetime_labels", snap.lifetime)),
        {
            "model": model,
            "version": str(number),
            "accuracy": num(snap.accuracy),
            "correct": str(snap.correct),
            "total": str(snap.total),
            "window_start_ms": str(snap.window_start_ms),
            "window_end_ms": str(snap.window_end_ms),
        },
        ttl_ms,
    )


@dataclass
class AccuracyBook:
    """RollingAccuracy of every model version this worker has seen labels for."""

    table: StateTable
    bucket_ms: int
    window_ms: int
    states: dict[Version, RollingAccuracy] = field(default_factory=dict)
    dirty: dict[Version, int] = field(default_factory=dict)

    def add(self, version: Version, label_time_ms: int, correct: bool) -> None:
        state = self.states.get(version)
        if state is None:
            state = self.states[version] = RollingAccuracy(self.bucket_ms, self.window_ms)
        state.add(label_time_ms, correct)
        self.table.put(None, version_key(version), encode(state))
        self.dirty[version] = self.dirty.get(version, 0) + 1

    def snapshot(self, version: Version) -> AccuracySnapshot | None:
        state = self.states.get(version)
        return state.snapshot() if state is not None else None

    def restore(self) -> None:
        for key, value in self.table.items():
            version = parse_version_key(key)
            self.states[version] = decode(value)
            self.dirty[version] = self.dirty.get(version, 0) + 1

    def mark_all_dirty(self) -> None:
        for version in self.states:
            self.dirty[version] = self.dirty.get(version, 0) + 1

    def pending(self, prefix: str, ttl_ms: int) -> tuple[list[HashWrite], dict[Version, int]]:
        snapshot = dict(self.dirty)
        writes = [accuracy_write(prefix, v, self.states[v].snapshot(), ttl_ms) for v in snapshot]
        return writes, snapshot

    def settle(self, snapshot: dict[Version, int]) -> None:
        for version, count in snapshot.items():
            if self.dirty.get(version) == count:
                del self.dirty[version]
