"""The local stack's ports: StackPorts with its env overrides, and probes of 127.0.0.1 ports."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"

ENV_KAFKA_PORT = "DRIFTLINE_STACK_KAFKA_PORT"
ENV_CONTROLLER_PORT = "DRIFTLINE_STACK_CONTROLLER_PORT"
ENV_REDIS_PORT = "DRIFTLINE_STACK_REDIS_PORT"


@dataclass(frozen=True)
class StackPorts:
    """Ports of the local stack; everything listens on 127.0.0.1 only."""

    kafka: int = 9092
    controller: int = 9093
    redis: int = 6379
    # An optional SASL_PLAINTEXT (SCRAM) listener next to the PLAINTEXT one; off when None.
    sasl: int | None = None
    # Nodes 2, 3, ... of a multi-node cluster: their client and controller ports, in order.
    more_kafka: tuple[int, ...] = ()
    more_controllers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.more_kafka) != len(self.more_controllers):
            raise ValueError("each extra Kafka node needs a client and a controller port")
        if self.sasl is not None and self.more_kafka:
            raise ValueError("the SASL listener is for a single-node stack only")
        named = [("kafka", self.kafka), ("controller", self.controller), ("redis", self.redis)]
        if self.sasl is not None:
            named.append(("sasl", self.sasl))
        for i, (kafka, controller) in enumerate(
            zip(self.more_kafka, self.more_controllers, strict=True), start=2
        ):
            named += [(f"node {i} kafka", kafka), (f"node {i} controller", controller)]
        for name, port in named:
            if not 0 < port < 65536:
                raise ValueError(f"{name} port {port} is not in 1..65535")
        if len({port for _, port in named}) != len(named):
            raise ValueError(f"stack ports must be distinct, got {self}")

    @property
    def brokers(self) -> int:
        return 1 + len(self.more_kafka)

    @property
    def kafka_ports(self) -> tuple[int, ...]:
        return (self.kafka, *self.more_kafka)

    @property
    def controller_ports(self) -> tuple[int, ...]:
        return (self.controller, *self.more_controllers)

    def node(self, index: int) -> StackPorts:
        """The ports one node listens on (index 0 is node 1), as a single-node view."""
        return StackPorts(
            kafka=self.kafka_ports[index],
            controller=self.controller_ports[index],
            redis=self.redis,
            sasl=self.sasl if index == 0 else None,
        )

    def with_brokers(self, brokers: int) -> StackPorts:
        """These ports for a cluster of `brokers` nodes: node i (from 2) takes the client and
        controller ports 2(i-1) above node 1's (9094/9095, 9096/9097 by default)."""
        if brokers < 1:
            raise ValueError(f"a cluster needs at least one broker, got {brokers}")
        extra = range(1, brokers)
        return StackPorts(
            kafka=self.kafka,
            controller=self.controller,
            redis=self.redis,
            sasl=self.sasl,
            more_kafka=tuple(self.kafka + 2 * i for i in extra),
            more_controllers=tuple(self.controller + 2 * i for i in extra),
        )

    @classmethod
    def from_env(cls) -> StackPorts:
        """Defaults overridden by DRIFTLINE_STACK_{KAFKA,CONTROLLER,REDIS}_PORT."""
        default = cls()

        def read(var: str, fallback: int) -> int:
            raw = os.environ.get(var, "").strip()
            if not raw:
                return fallback
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{var}={raw!r} is not a port number") from None

        return cls(
            kafka=read(ENV_KAFKA_PORT, default.kafka),
            controller=read(ENV_CONTROLLER_PORT, default.controller),
            redis=read(ENV_REDIS_PORT, default.redis),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kafka": self.kafka,
            "controller": self.controller,
            "redis": self.redis,
        }
        if self.sasl is not None:
            out["sasl"] = self.sasl
        if self.more_kafka:
            out["more_kafka"] = list(self.more_kafka)
            out["more_controllers"] = list(self.more_controllers)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> StackPorts:
        sasl = raw.get("sasl")
        return cls(
            kafka=int(raw["kafka"]),
            controller=int(raw["controller"]),
            redis=int(raw["redis"]),
            sasl=int(sasl) if sasl is not None else None,
            more_kafka=tuple(int(p) for p in raw.get("more_kafka", ())),
            more_controllers=tuple(int(p) for p in raw.get("more_controllers", ())),
        )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def port_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:<port> (it can be bound right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def port_accepts(port: int, timeout_s: float = 0.5) -> bool:
    """True if a TCP connection to 127.0.0.1:<port> succeeds."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s):
            return True
    except OSError:
        return False
