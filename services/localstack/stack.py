"""LocalStack: start, stop and inspect the local single-node Kafka and Redis of one data dir."""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from driftline.services.localstack.errors import PortInUseError, StackStartError
from driftline.services.localstack.kafka import (
    KafkaNode,
    broker_ready,
    check_scram_users,
    default_jar_cache,
    ensure_jars,
    find_java,
    make_admin,
)
from driftline.services.localstack.ports import (
    ENV_CONTROLLER_PORT,
    ENV_KAFKA_PORT,
    ENV_REDIS_PORT,
    HOST,
    StackPorts,
    port_accepts,
    port_free,
)
from driftline.services.localstack.processes import (
    PidFile,
    pid_alive,
    stop,
    tail,
    write_atomic,
)
from driftline.services.localstack.redis import RedisNode, find_redis_server, redis_ping

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

Service = Literal["kafka", "redis"]

_DEFAULT_PORTS = StackPorts()


@dataclass(frozen=True)
class StackStatus:
    """Snapshot of the local stack; pids are set only for live processes that are ours."""

    kafka_pid: int | None
    kafka_running: bool
    redis_pid: int | None
    redis_running: bool
    bootstrap_servers: str
    redis_url: str
    data_dir: Path
    # host:port of the SASL_PLAINTEXT (SCRAM-SHA-512) listener, when the stack has one.
    sasl_bootstrap_servers: str | None = None

    @property
    def running(self) -> bool:
        return self.kafka_running and self.redis_running


class LocalStack:
    """A local single-node Kafka (KRaft, combined broker+controller) and Redis server.

    Everything lives in ``data_dir``: configs, Kafka log dirs, Redis dir, logs, pid files and
    ``stack.json`` (the ports of the last started stack). Processes are started detached, so
    the stack outlives the Python process that called :meth:`up` until :meth:`down`.

    ``scram_users`` (name to password) adds a SASL_PLAINTEXT listener with SCRAM-SHA-512 on
    ``ports.sasl``; the users are created when the storage is first formatted.
    ``acl_super_users`` turns on ACL enforcement (StandardAuthorizer) with those SCRAM users as
    super users; everyone else needs ACLs. Both are off by default.
    """

    def __init__(
        self,
        data_dir: Path,
        ports: StackPorts = _DEFAULT_PORTS,
        *,
        jar_cache: Path | None = None,
        log: Callable[[str], None] = print,
        scram_users: Mapping[str, str] | None = None,
        acl_super_users: Sequence[str] | None = None,
    ) -> None:
        users = tuple(sorted((scram_users or {}).items()))
        if users and ports.sasl is None:
            raise ValueError("scram_users need a SASL listener port: StackPorts(sasl=...)")
        if acl_super_users is not None and not users:
            raise ValueError("ACLs (acl_super_users) need SCRAM users to grant them to")
        check_scram_users(users)
        self.data_dir = Path(data_dir).resolve()
        self.ports = ports
        self.jar_cache = (jar_cache if jar_cache is not None else default_jar_cache()).resolve()
        self._log = log
        supers = tuple(acl_super_users) if acl_super_users is not None else None
        self._kafka = KafkaNode(self.data_dir, log, users, supers)
        self._redis = RedisNode(self.data_dir, log)

    # ---- paths

    @property
    def server_properties(self) -> Path:
        return self._kafka.server_properties

    @property
    def redis_conf(self) -> Path:
        return self._redis.conf

    @property
    def kafka_log_dir(self) -> Path:
        return self._kafka.log_dir

    @property
    def kafka_stdout(self) -> Path:
        return self._kafka.stdout

    @property
    def kafka_server_log(self) -> Path:
        return self._kafka.server_log

    @property
    def redis_log(self) -> Path:
        return self._redis.log_file

    def _pid_file(self, service: Service) -> PidFile:
        return self._kafka.pid_file if service == "kafka" else self._redis.pid_file

    @property
    def _stack_json(self) -> Path:
        return self.data_dir / "stack.json"

    # ---- public API

    def up(self, timeout_s: float = 120.0) -> StackStatus:
        """Start whatever part of the stack is not running; return once both answer.

        Idempotent: if Kafka and Redis from this data dir already run, only returns their
        status. ``timeout_s`` bounds the wait for readiness (not the one-off jar download or
        redis-server install). Raises PrerequisiteMissing, PortInUseError or StackStartError.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            kafka_pid = self._kafka.pid_file.running_pid()
            redis_pid = self._redis.pid_file.running_pid()
            recorded = self._recorded_ports()
            if kafka_pid is not None and redis_pid is not None:
                return self._status(recorded or self.ports)
            # A half-running stack keeps its recorded ports; a stopped one takes ours.
            ports = recorded if (recorded and (kafka_pid or redis_pid)) else self.ports

            java: str | None = None
            libdir: Path | None = None
            redis_server: str | None = None
            if kafka_pid is None:
                java = find_java()
                libdir = ensure_jars(self.jar_cache, self._log)
            if redis_pid is None:
                redis_server = find_redis_server(self._log)
            self._check_ports(ports, kafka=kafka_pid is None, redis=redis_pid is None)
            write_atomic(self._stack_json, json.dumps({"ports": ports.to_json()}, indent=2))

            started: list[Service] = []
            try:
                deadline = time.monotonic() + timeout_s
                if java is not None and libdir is not None:
                    self._kafka.start(java, libdir, ports)
                    started.append("kafka")
                if redis_server is not None:
                    self._redis.start(redis_server, ports)
                    started.append("redis")
                self._wait_ready(ports, deadline)
            except BaseException:
                if started:
                    self._log(f"localstack: stopping {' and '.join(started)} after failed start")
                    self._stop(started, timeout_s=15.0)
                raise
            status = self._status(ports)
            self._log(
                f"localstack: up (kafka {status.bootstrap_servers} pid {status.kafka_pid}, "
                f"redis {status.redis_url} pid {status.redis_pid}, data {self.data_dir})"
            )
            return status

    def prepare(self) -> None:
        """Install what up() needs without starting anything: Java check, jars, redis-server."""
        find_java()
        ensure_jars(self.jar_cache, self._log)
        find_redis_server(self._log)

    def down(self, timeout_s: float = 30.0) -> None:
        """Stop the processes recorded by up(); SIGKILL whatever outlives ``timeout_s``."""
        if not self.data_dir.is_dir():
            return
        with self._lock():
            self._stop(["kafka", "redis"], timeout_s=timeout_s)

    def status(self) -> StackStatus:
        """Current state, with the ports from stack.json when a stack was started here."""
        return self._status(self._recorded_ports() or self.ports)

    # ---- state

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.data_dir / ".lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _recorded_ports(self) -> StackPorts | None:
        try:
            data = json.loads(self._stack_json.read_text(encoding="utf-8"))
            raw = data["ports"]
            sasl = raw.get("sasl")
            return StackPorts(
                kafka=int(raw["kafka"]),
                controller=int(raw["controller"]),
                redis=int(raw["redis"]),
                sasl=int(sasl) if sasl is not None else None,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _status(self, ports: StackPorts) -> StackStatus:
        kafka_pid = self._kafka.pid_file.running_pid()
        redis_pid = self._redis.pid_file.running_pid()
        return StackStatus(
            kafka_pid=kafka_pid,
            kafka_running=kafka_pid is not None,
            redis_pid=redis_pid,
            redis_running=redis_pid is not None,
            bootstrap_servers=f"{HOST}:{ports.kafka}",
            redis_url=f"redis://{HOST}:{ports.redis}/0",
            data_dir=self.data_dir,
            sasl_bootstrap_servers=f"{HOST}:{ports.sasl}" if ports.sasl is not None else None,
        )

    # ---- lifecycle

    def _check_ports(self, ports: StackPorts, *, kafka: bool, redis: bool) -> None:
        wanted: list[tuple[str, int, str]] = []
        if kafka:
            wanted += [
                ("Kafka", ports.kafka, ENV_KAFKA_PORT),
                ("Kafka controller", ports.controller, ENV_CONTROLLER_PORT),
            ]
            if ports.sasl is not None:
                wanted.append(("Kafka SASL", ports.sasl, ""))
        if redis:
            wanted.append(("Redis", ports.redis, ENV_REDIS_PORT))
        for what, port, env in wanted:
            if not port_free(port):
                with_env = f"{env}=<port> (or " if env else "("
                raise PortInUseError(
                    f"{what} port {HOST}:{port} is already in use by another process; "
                    f"stop it or choose another port with {with_env}"
                    f"LocalStack(ports=StackPorts(...)))"
                )

    def _wait_ready(self, ports: StackPorts, deadline: float) -> None:
        kafka_ready = redis_ready = False
        admin: AdminClient | None = None
        probe_made = False
        while True:
            if not redis_ready:
                self._raise_if_dead("redis", self._redis.stdout, self.redis_log)
                redis_ready = redis_ping(ports.redis)
            if not kafka_ready:
                self._raise_if_dead("kafka", self.kafka_stdout, self.kafka_server_log)
                if port_accepts(ports.kafka):
                    if not probe_made:
                        admin, probe_made = make_admin(f"{HOST}:{ports.kafka}"), True
                    kafka_ready = broker_ready(admin, self.kafka_server_log)
            if kafka_ready and redis_ready:
                return
            if time.monotonic() > deadline:
                pending = [
                    name
                    for name, ready in (("Kafka", kafka_ready), ("Redis", redis_ready))
                    if not ready
                ]
                raise StackStartError(
                    f"{' and '.join(pending)} not ready in time; last Kafka log lines:\n"
                    f"{tail(self.kafka_server_log)}\n"
                    f"last Redis log lines:\n{tail(self.redis_log)}"
                )
            time.sleep(0.25)

    def _raise_if_dead(self, service: Service, *logs: Path) -> None:
        pid = self._pid_file(service).read()
        if pid is not None and pid_alive(pid):
            return
        tails = "\n".join(f"--- {path}:\n{tail(path)}" for path in logs)
        raise StackStartError(f"{service} (pid {pid}) exited during startup:\n{tails}")

    def _stop(self, services: Sequence[Service], timeout_s: float) -> None:
        stop([self._pid_file(service) for service in services], timeout_s, self._log)
