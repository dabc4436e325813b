"""The local stack's ports: StackPorts with its env overrides, and probes of 127.0.0.1 ports."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

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

    def __post_init__(self) -> None:
        named = [("kafka", self.kafka), ("controller", self.controller), ("redis", self.redis)]
        if self.sasl is not None:
            named.append(("sasl", self.sasl))
        for name, port in named:
            if not 0 < port < 65536:
                raise ValueError(f"{name} port {port} is not in 1..65535")
        if len({port for _, port in named}) != len(named):
            raise ValueError(f"stack ports must be distinct, got {self}")

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

    def to_json(self) -> dict[str, int]:
        out = {"kafka": self.kafka, "controller": self.controller, "redis": self.redis}
        if self.sasl is not None:
            out["sasl"] = self.sasl
        return out


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
