"""How the join's tables are keyed: events and waiting inspections, and the index by time.

Table keys are `asset \\x1f event id` (and `asset \\x1f\\x1e <label position>` for a waiting
inspection). The index table's key spaces order them by time: an asset's events by event time
(inspections), all events by event time (eviction), waiting labels by label time; every index
key starts with its space's byte, and times are 8 bytes that sort as the times do.
"""

from __future__ import annotations

from driftline.services.features.tables import StateTable, key_partition

SEP = b"\x1f"
INSPECTION_MARK = "\x1e"

# Key spaces of the index table (values are MARK): every key starts with its space's byte.
INDEX_BY_ASSET = b"a"
INDEX_BY_TIME = b"t"
INDEX_DUE = b"l"
MARK = b"\x01"


def join_partition(asset_id: str, partitions: int) -> int:
    """The join-topic partition of an asset (Kafka's default key hash of the asset id)."""
    return key_partition(asset_id.encode(), partitions)


def event_key(asset_id: str, event_id: str) -> bytes:
    return f"{asset_id}\x1f{event_id}".encode()


def inspection_key(asset_id: str, source: tuple[str, int, int]) -> bytes:
    topic, partition, offset = source
    return f"{asset_id}\x1f{INSPECTION_MARK}{topic}\x1f{partition}\x1f{offset}".encode()


def encode_time(t: int) -> bytes:
    """An event time as 8 bytes that sort as the times do (negative ones too)."""
    return (t + (1 << 63)).to_bytes(8, "big")


def decode_time(b: bytes) -> int:
    return int.from_bytes(b, "big") - (1 << 63)


def by_asset_key(key: bytes, event_time_ms: int) -> bytes:
    """`a asset \\x1f time event id`: an asset's events in event-time order (inspections)."""
    asset, event_id = key.split(SEP, 1)
    return INDEX_BY_ASSET + asset + SEP + encode_time(event_time_ms) + event_id


def by_time_key(key: bytes, event_time_ms: int) -> bytes:
    """`t time asset \\x1f event id`: every event in event-time order (eviction)."""
    return INDEX_BY_TIME + encode_time(event_time_ms) + key


def due_key(label_time_ms: int, key: bytes) -> bytes:
    """`l label time key`: waiting labels in the order their wait runs out."""
    return INDEX_DUE + encode_time(label_time_ms) + key


def first_key(table: StateTable, space: bytes, *, reverse: bool = False) -> bytes | None:
    """The first (or last) key of an index key space."""
    stop = bytes([space[0] + 1])
    found = next(table.scan(space, stop, reverse=reverse), None)
    return found[0] if found is not None else None


def asset_of(key: bytes) -> str:
    return key.split(SEP, 1)[0].decode()
