"""Redis with ACL users: the feature store connects as a named user with a password in its URL.

A redis-server of this test's own (free port) has the default user switched off and a
`driftline` user allowed only keys under the feature store's prefix, as in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from driftline.services.features.settings import FeaturesSettings
from driftline.services.features.store import HashWrite, RedisFeatureStore
from driftline.services.localstack import free_port
from driftline.services.localstack.ports import port_accepts
from driftline.services.localstack.redis import find_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# A password with characters a URL must escape: the URL carries it percent-encoded.
PASSWORD = "p@ss/w:rd-" + secrets.token_hex(8)
READER_PASSWORD = secrets.token_hex(16)


class AclRedis:
    def __init__(self, port: int) -> None:
        self.port = port

    def url(self, user: str, password: str) -> str:
        return f"redis://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/0"


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    folder = Path(tmp_path_factory.mktemp("redis-acl"))
    port = free_port()
    conf = folder / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {port}",
                f'dir "{folder}"',
                'save ""',
                "appendonly no",
                # Nobody connects without a user and password.
                "user default off",
                # The features app: every command, only its own keys (scripts included).
                f"user driftline on >{PASSWORD} ~driftline:* +@all -@dangerous",
                # A dashboard or `features get`: reads only.
                f"user reader on >{READER_PASSWORD} ~driftline:* +@read +@connection",
            ]
        )
        + "\n"
    )
    proc = subprocess.Popen(
        [find_redis_server(print), str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not port_accepts(port):
            assert proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.05)
        yield AclRedis(port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_client_without_credentials_is_refused(acl_redis: AclRedis) -> None:
    # No retries: redis-py retries a refused HELLO with backoff (seconds), to the same answer.
    client = redis.Redis(host="127.0.0.1", port=acl_redis.port, socket_timeout=5, retry=None)
    try:
        with pytest.raises(redis.AuthenticationError):
            client.ping()
    finally:
        client.close()


def test_the_feature_store_writes_as_an_acl_user_from_its_url(acl_redis: AclRedis) -> None:
    settings = FeaturesSettings(redis_url=acl_redis.url("driftline", PASSWORD))
    assert PASSWORD not in repr(settings), "the URL's password stays out of reprs and logs"
    write = HashWrite(
        key="driftline:asset:insulator-00001",
        order=(("event_time_ms", 1_700_000_000_000),),
        fields={"insulator-sensor:v1:1m:mean_confidence": "0.93"},
        ttl_ms=60_000,
    )

    async def roundtrip() -> tuple[int, dict[str, str], bool]:
        store = RedisFeatureStore.from_url(settings.redis_url.get_secret_value(), 2.0)
        try:
            applied = await store.write([write])
            alive = await store.alive("driftline:features:alive")
            return applied, await store.read(write.key), alive
        finally:
            await store.client.aclose()

    applied, stored, _ = asyncio.run(roundtrip())
    assert applied == 1
    assert stored["insulator-sensor:v1:1m:mean_confidence"] == "0.93"

    # The ACL confines the user to its prefix: another deployment's keys are out of reach.
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    try:
        assert client.acl_whoami() == "driftline"
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("other:key", "1")
    finally:
        client.close()


def test_a_read_only_user_reads_but_cannot_write(acl_redis: AclRedis) -> None:
    client = redis.Redis.from_url(acl_redis.url("reader", READER_PASSWORD), socket_timeout=5)
    try:
        client.hgetall("driftline:asset:insulator-00001")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.hset("driftline:asset:insulator-00001", "x", "1")
    finally:
        client.close()


def test_a_wrong_password_is_refused(acl_redis: AclRedis) -> None:
    client = redis.Redis.from_url(acl_redis.url("driftline", "wrong"), socket_timeout=5)
    try:
        with pytest.raises(redis.AuthenticationError):
            client.ping()
    finally:
        client.close()
