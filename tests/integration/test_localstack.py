"""Integration test: the local Kafka (KRaft) + Redis stack really starts, serves and stops."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from driftline.services.localstack import (
    LocalStack,
    PrerequisiteMissing,
    StackPorts,
    StackStatus,
    free_port,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _distinct_free_ports() -> StackPorts:
    while True:
        kafka, controller, redis = free_port(), free_port(), free_port()
        if len({kafka, controller, redis}) == 3:
            return StackPorts(kafka=kafka, controller=controller, redis=redis)


def _alive(pid: int) -> bool:
    """True for a live, non-zombie process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _redis_command(port: int, *args: str) -> bytes:
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(arg.encode())}\r\n{arg}\r\n".encode() for arg in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _exercise_kafka(status: StackStatus) -> None:
    bootstrap = status.bootstrap_servers
    topic = f"localstack-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=2)]).values():
        future.result(timeout=30)

    # Image events are several MiB: the broker must accept a 4 MiB record.
    big = os.urandom(4 * 1024 * 1024)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"tx-{topic}",
            "message.max.bytes": 10 * 1024 * 1024,
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    producer.produce(topic, key=b"big", value=big)
    producer.commit_transaction(30)
    # An aborted transaction must stay invisible to read_committed consumers.
    producer.begin_transaction()
    producer.produce(topic, key=b"aborted", value=b"nope")
    producer.abort_transaction(30)

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    got: dict[bytes, bytes] = {}
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 45
        while len(got) < 6 and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            key, value = msg.key(), msg.value()
            assert key is not None
            assert value is not None
            got[key] = value
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert set(got) == {b"k0", b"k1", b"k2", b"k3", b"k4", b"big"}
    assert got[b"k3"] == b"v3"
    assert got[b"big"] == big


def test_local_stack_lifecycle(tmp_path: Path) -> None:
    ports = _distinct_free_ports()
    data_dir = tmp_path / "stack"
    logs: list[str] = []
    stack = LocalStack(data_dir, ports, log=logs.append)
    # A process that is not ours: down() must leave it alone, even when a pid file names it.
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        try:
            first = stack.up(timeout_s=90)
        except PrerequisiteMissing as exc:
            pytest.skip(f"local stack prerequisites missing: {exc}")
        assert first.kafka_running
        assert first.redis_running
        kafka_pid, redis_pid = first.kafka_pid, first.redis_pid
        assert kafka_pid is not None
        assert redis_pid is not None
        assert first.bootstrap_servers == f"127.0.0.1:{ports.kafka}"
        assert first.redis_url == f"redis://127.0.0.1:{ports.redis}/0"

        t0 = time.monotonic()
        second = stack.up(timeout_s=90)
        assert (second.kafka_pid, second.redis_pid) == (kafka_pid, redis_pid)
        assert time.monotonic() - t0 < 5

        # status() of a stack started on other ports reads them back from stack.json.
        other_view = LocalStack(data_dir, log=logs.append).status()
        assert other_view.bootstrap_servers == first.bootstrap_servers
        assert other_view.kafka_pid == kafka_pid

        assert _redis_command(ports.redis, "PING") == b"+PONG\r\n"
        assert _redis_command(ports.redis, "SET", "driftline:k", "v") == b"+OK\r\n"
        assert _redis_command(ports.redis, "GET", "driftline:k") == b"$1\r\nv\r\n"

        _exercise_kafka(first)
    finally:
        stack.down(timeout_s=30)

    try:
        assert not _alive(kafka_pid)
        assert not _alive(redis_pid)
        after = stack.status()
        assert not after.kafka_running
        assert not after.redis_running
        assert after.kafka_pid is None
        assert after.redis_pid is None
        assert not (data_dir / "kafka.pid").exists()
        assert not (data_dir / "redis.pid").exists()
        assert _port_free(ports.kafka)
        assert _port_free(ports.redis)

        # A stale pid file that now names an unrelated process (pid reuse) is not obeyed.
        (data_dir / "kafka.pid").write_text(f"{bystander.pid}\n")
        (data_dir / "redis.pid").write_text(f"{bystander.pid}\n")
        stack.down(timeout_s=5)
        assert bystander.poll() is None, "down() killed a process it did not start"
        assert not (data_dir / "kafka.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()
