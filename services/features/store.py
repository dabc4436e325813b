"""The feature store: Redis key layout, last-write-wins hash writes, Redis and in-memory stores.

Key layout (`P` is `redis_key_prefix`, default "driftline:"; one hash per entity):

    P stats:{asset}:{model}:v{version}:{window}:{start_ms}   one window of one asset and version
                                                                window "1m" (tumbling) or "10m"
                                                                (hopping, every 1m), TTL stats_ttl_s
    P asset:{asset}                                            the freshest windows of the asset,
                                                                fields "{model}:v{version}:{window}:
                                                                {feature}", TTL latest_ttl_s; one
                                                                HGETALL reads every feature
    P accuracy:{model}:v{version}                              live accuracy index: bucket size,
                                                                horizon, calibration; per join
                                                                partition n "p{n}:newest_ms"
    P accuracy:{model}:v{version}:{bucket}:{start_ms}          one event-time bucket, fields
                                                                "p{n}:{counter}" per join partition
                                                                (scored, labelled, correct, ...):
                                                                a reader sums the partitions
    P drift:{model}:v{version}                                 the last drift evaluation
    P features:alive                                           sentinel: gone means Redis lost
                                                                our data, so everything is rewritten

Every write carries ordering fields stored beside the values (the window's newest event time,
then its count, ...). A small Lua script, run with EVALSHA, applies a write only if its ordering
fields are not older than those stored, compared in order; equal values rewrite the same data.
So writes are idempotent and last-write-wins by event time: a replay, a retry after an outage
or a rebuild converges to the same hashes. Writes go out in pipelines, one round trip per flush.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

STATS_KEY = "{prefix}stats:{asset}:{model}:v{version}:{window}:{start}"
ASSET_KEY = "{prefix}asset:{asset}"
ASSET_FIELD = "{model}:v{version}:{window}:{feature}"
ACCURACY_KEY = "{prefix}accuracy:{model}:v{version}"
ACCURACY_BUCKET_KEY = "{prefix}accuracy:{model}:v{version}:{bucket}:{start}"
PARTITION_FIELD = "p{partition}:{name}"  # a field one join partition owns in a shared hash
DRIFT_KEY = "{prefix}drift:{model}:v{version}"
SENTINEL_KEY = "{prefix}features:alive"

EVENT_TIME_FIELD = "event_time_ms"
PIPELINE_CHUNK = 2000

# KEYS[1] the hash; ARGV[1] TTL in ms (0: none); ARGV[2] n, the number of ordering fields;
# ARGV[3] a MessagePack array of field/value strings, the n ordering fields first (one packed
# argument instead of dozens keeps the client's per-command cost low). Applied only when the
# ordering fields are not older than the stored ones (lexicographic; a missing one is older).
LWW_SCRIPT = """
local kv = cmsgpack.unpack(ARGV[3])
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local cur = redis.call('HGET', KEYS[1], kv[1 + 2 * i])
  if not cur then break end
  local new = tonumber(kv[2 + 2 * i])
  cur = tonumber(cur)
  if new < cur then return 0 end
  if new > cur then break end
end
redis.call('HSET', KEYS[1], unpack(kv))
local ttl = tonumber(ARGV[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""

_PACK = msgspec.msgpack.Encoder()


def window_name(size_ms: int) -> str:
    """ "1m", "10m", "90s": the window part of keys and field names."""
    if size_ms % 60_000 == 0:
        return f"{size_ms // 60_000}m"
    if size_ms % 1000 == 0:
        return f"{size_ms // 1000}s"
    return f"{size_ms}ms"


def num(value: float) -> str:
    """A float as stored: six decimals, the same text for the same value on every run."""
    return repr(round(float(value), 6))


@dataclass(frozen=True)
class HashWrite:
    """Set `fields` on hash `key` unless the stored `order` fields are newer; then set the TTL."""

    key: str
    order: tuple[tuple[str, int], ...]
    fields: Mapping[str, str]
    ttl_ms: int = 0

    def args(self) -> list[str | int | bytes]:
        """ARGV of LWW_SCRIPT: TTL, the number of ordering fields, the packed field/values."""
        kv: list[str] = []
        for name, value in self.order:
            kv += [name, str(value)]
        for name, text in self.fields.items():
            kv += [name, text]
        return [self.ttl_ms, len(self.order), _PACK.encode(kv)]


class FeatureStore(Protocol):
    """Where features go: last-write-wins hash writes, and whether it still holds our data."""

    async def write(self, writes: Sequence[HashWrite]) -> int:
        """Apply the writes (one round trip per chunk); returns how many were not older."""
        ...

    async def alive(self, sentinel: str) -> bool:
        """True if the sentinel key is there (the store kept our data); sets it if missing."""
        ...


def _newer_or_equal(stored: Mapping[str, str], order: Iterable[tuple[str, int]]) -> bool:
    for name, value in order:
        cur = stored.get(name)
        if cur is None:
            return True
        if value < float(cur):
            return False
        if value > float(cur):
            return True
    return True


@dataclass
class MemoryFeatureStore:
    """The in-memory twin of RedisFeatureStore: the same last-write-wins rule and TTLs."""

    hashes: dict[str, dict[str, str]] = field(default_factory=dict)
    expires: dict[str, float] = field(default_factory=dict)
    down: bool = False

    def _live(self, key: str) -> dict[str, str] | None:
        deadline = self.expires.get(key)
        if deadline is not None and deadline <= time.monotonic():
            self.hashes.pop(key, None)
            self.expires.pop(key, None)
        return self.hashes.get(key)

    async def write(self, writes: Sequence[HashWrite]) -> int:
        if self.down:
            raise ConnectionError("memory store marked down")
        applied = 0
        for w in writes:
            stored = self._live(w.key) or {}
            if not _newer_or_equal(stored, w.order):
                continue
            stored.update({name: str(value) for name, value in w.order})
            stored.update(w.fields)
            self.hashes[w.key] = stored
            if w.ttl_ms > 0:
                self.expires[w.key] = time.monotonic() + w.ttl_ms / 1000.0
            applied += 1
        return applied

    async def read(self, key: str) -> dict[str, str]:
        if self.down:
            raise ConnectionError("memory store marked down")
        return dict(self._live(key) or {})

    async def alive(self, sentinel: str) -> bool:
        if self.down:
            raise ConnectionError("memory store marked down")
        if self._live(sentinel) is not None:
            return True
        self.hashes[sentinel] = {}
        return False


class RedisFeatureStore:
    """Redis hashes written through pipelined EVALSHA of the last-write-wins script."""

    def __init__(self, client: Any) -> None:
        # client: redis.asyncio.Redis with decode_responses=True
        self.client = client
        self._script = client.register_script(LWW_SCRIPT)

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 2.0) -> RedisFeatureStore:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
        )
        return cls(client)

    async def write(self, writes: Sequence[HashWrite]) -> int:
        applied = 0
        for lo in range(0, len(writes), PIPELINE_CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for w in writes[lo : lo + PIPELINE_CHUNK]:
                await self._script(keys=[w.key], args=w.args(), client=pipe)
            results = await pipe.execute()
            applied += sum(int(r) for r in results)
        return applied

    async def read(self, key: str) -> dict[str, str]:
        got: dict[str, str] = await self.client.hgetall(key)
        return got

    async def alive(self, sentinel: str) -> bool:
        created = await self.client.set(sentinel, str(int(time.time() * 1000)), nx=True)
        return not created

    async def close(self) -> None:
        await self.client.aclose()
