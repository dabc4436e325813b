"""LocalStack: start, stop and inspect the local single-node Kafka and Redis of one data dir."""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from driftline.services.localstack.errors import PortInUseError, StackStartError
from driftline.services.localstack.kafka import (
    KafkaNode,
    broker_ready,
    check_scram_users,
    default_jar_cache,
    ensure_jars,
    find_java,
    make_admin,
    new_cluster_id,
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
    # Every Kafka node's pid (None: not running), node 1 first; kafka_pid is node 1's.
    kafka_pids: tuple[int | None, ...] = ()

    @property
    def running(self) -> bool:
        return self.kafka_running and self.redis_running


class LocalStack:
    """A local Kafka (KRaft, combined broker+controller nodes) and Redis server.

    One Kafka node by default; ``StackPorts.with_brokers(3)`` makes a three-node cluster on
    loopback (static controller quorum of the three, topics replicated three times with
    ``min.insync.replicas=2``), node 1 in ``data_dir`` and nodes 2 and 3 in
    ``data_dir/node-2`` and ``data_dir/node-3``.

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
        self._users = users
        self._supers = tuple(acl_super_users) if acl_super_users is not None else None
        self._kafka = self._nodes(ports)[0]
        self._redis = RedisNode(self.data_dir, log)

    def _nodes(self, ports: StackPorts) -> list[KafkaNode]:
        """The Kafka nodes of a stack with these ports, node 1 first."""
        voters = tuple(enumerate(ports.controller_ports, start=1)) if ports.brokers > 1 else ()
        return [
            KafkaNode(
                self.data_dir if i == 0 else self.data_dir / f"node-{i + 1}",
                self._log,
                self._users,
                self._supers,
                node_id=i + 1,
                voters=voters,
            )
            for i in range(ports.brokers)
        ]

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

    @property
    def _stack_json(self) -> Path:
        return self.data_dir / "stack.json"

    # ---- public API

    def up(self, timeout_s: float = 120.0) -> StackStatus:
        """Start whatever part of the stack is not running; return once all of it answers.

        Idempotent: if every Kafka node and Redis from this data dir already run, only returns
        their status; a node that was stopped or killed is started again. ``timeout_s`` bounds
        the wait for readiness (not the one-off jar download or redis-server install). Raises
        PrerequisiteMissing, PortInUseError or StackStartError.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            recorded = self._recorded_ports()
            self._check_same_cluster(recorded)
            redis_pid = self._redis.pid_file.running_pid()
            running = [n.pid_file.running_pid() for n in self._nodes(recorded or self.ports)]
            if all(running) and redis_pid is not None:
                return self._status(recorded or self.ports)
            # A half-running stack keeps its recorded ports; a stopped one takes ours.
            half = any(running) or redis_pid is not None
            ports = recorded if (recorded and half) else self.ports
            nodes = self._nodes(ports)
            missing = [i for i, n in enumerate(nodes) if n.pid_file.running_pid() is None]

            java: str | None = None
            libdir: Path | None = None
            redis_server: str | None = None
            if missing:
                java = find_java()
                libdir = ensure_jars(self.jar_cache, self._log)
            if redis_pid is None:
                redis_server = find_redis_server(self._log)
            self._check_ports(ports, nodes=missing, redis=redis_pid is None)
            write_atomic(self._stack_json, json.dumps({"ports": ports.to_json()}, indent=2))
            cluster_id = self._cluster_id() if ports.brokers > 1 else None

            started: list[PidFile] = []
            try:
                deadline = time.monotonic() + timeout_s
                if java is not None and libdir is not None:
                    for i in missing:
                        nodes[i].start(java, libdir, ports.node(i), cluster_id)
                        started.append(nodes[i].pid_file)
                if redis_server is not None:
                    self._redis.start(redis_server, ports)
                    started.append(self._redis.pid_file)
                self._wait_ready(ports, nodes, deadline)
            except BaseException:
                if started:
                    names = ", ".join(f.service for f in started)
                    self._log(f"localstack: stopping {names} after failed start")
                    stop(started, 15.0, self._log)
                raise
            status = self._status(ports)
            pids = ", ".join(str(pid) for pid in status.kafka_pids)
            self._log(
                f"localstack: up (kafka {status.bootstrap_servers} pid {pids}, "
                f"redis {status.redis_url} pid {status.redis_pid}, data {self.data_dir})"
            )
            return status

    def _check_same_cluster(self, recorded: StackPorts | None) -> None:
        """Refuse to turn a data dir's stack into one of another size: node 1's storage is
        formatted for the quorum it was first started with."""
        if recorded is None or recorded.brokers == self.ports.brokers:
            return
        if (self._kafka.log_dir / "meta.properties").is_file():
            raise StackStartError(
                f"{self.data_dir} holds a {recorded.brokers}-broker stack, not "
                f"{self.ports.brokers}: run `driftline stack down`, then remove that folder "
                "or choose another --data-dir"
            )

    def _cluster_id(self) -> str:
        """One cluster id for every node of a cluster, kept beside the nodes' data."""
        path = self.data_dir / "cluster.id"
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            cid = new_cluster_id()
            write_atomic(path, cid + "\n")
            return cid

    def prepare(self) -> None:
        """Install what up() needs without starting anything: Java check, jars, redis-server."""
        find_java()
        ensure_jars(self.jar_cache, self._log)
        find_redis_server(self._log)

    def down(self, timeout_s: float = 30.0) -> None:
        """Stop the processes recorded by up(), every Kafka node and Redis; SIGKILL whatever
        outlives ``timeout_s``."""
        if not self.data_dir.is_dir():
            return
        with self._lock():
            files = [n.pid_file for n in self._nodes(self._recorded_ports() or self.ports)]
            known = {f.path for f in files}
            for extra in sorted(self.data_dir.glob("node-*/kafka.pid")):
                if extra not in known:  # a node of an earlier, larger stack in this dir
                    node = KafkaNode(extra.parent, self._log)
                    files.append(node.pid_file)
            stop([*files, self._redis.pid_file], timeout_s, self._log)

    def stop_node(self, node_id: int, timeout_s: float = 30.0) -> None:
        """Stop one Kafka node (SIGTERM, then SIGKILL after ``timeout_s``); up() restarts it."""
        nodes = self._nodes(self._recorded_ports() or self.ports)
        if not 1 <= node_id <= len(nodes):
            raise ValueError(f"node {node_id}: this stack has nodes 1..{len(nodes)}")
        with self._lock():
            stop([nodes[node_id - 1].pid_file], timeout_s, self._log)

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
            return StackPorts.from_json(data["ports"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _status(self, ports: StackPorts) -> StackStatus:
        pids = tuple(n.pid_file.running_pid() for n in self._nodes(ports))
        redis_pid = self._redis.pid_file.running_pid()
        return StackStatus(
            kafka_pid=pids[0],
            kafka_running=all(pid is not None for pid in pids),
            redis_pid=redis_pid,
            redis_running=redis_pid is not None,
            bootstrap_servers=",".join(f"{HOST}:{port}" for port in ports.kafka_ports),
            kafka_pids=pids,
            redis_url=f"redis://{HOST}:{ports.redis}/0",
            data_dir=self.data_dir,
            sasl_bootstrap_servers=f"{HOST}:{ports.sasl}" if ports.sasl is not None else None,
        )

    # ---- lifecycle

    def _check_ports(self, ports: StackPorts, *, nodes: Sequence[int], redis: bool) -> None:
        wanted: list[tuple[str, int, str]] = []
        for i in nodes:
            node = "" if ports.brokers == 1 else f" node {i + 1}"
            first = i == 0
            wanted += [
                (f"Kafka{node}", ports.kafka_ports[i], ENV_KAFKA_PORT if first else ""),
                (
                    f"Kafka{node} controller",
                    ports.controller_ports[i],
                    ENV_CONTROLLER_PORT if first else "",
                ),
            ]
            if first and ports.sasl is not None:
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

    def _wait_ready(self, ports: StackPorts, nodes: Sequence[KafkaNode], deadline: float) -> None:
        kafka_ready = redis_ready = False
        admin: AdminClient | None = None
        probe_made = False
        bootstrap = ",".join(f"{HOST}:{port}" for port in ports.kafka_ports)
        while True:
            if not redis_ready:
                self._raise_if_dead(self._redis.pid_file, self._redis.stdout, self.redis_log)
                redis_ready = redis_ping(ports.redis)
            if not kafka_ready:
                for node in nodes:
                    self._raise_if_dead(node.pid_file, node.stdout, node.server_log)
                if any(port_accepts(port) for port in ports.kafka_ports):
                    if not probe_made:
                        admin, probe_made = make_admin(bootstrap), True
                    kafka_ready = broker_ready(admin, self.kafka_server_log, ports.brokers)
            if kafka_ready and redis_ready:
                return
            if time.monotonic() > deadline:
                pending = [
                    name
                    for name, ready in (("Kafka", kafka_ready), ("Redis", redis_ready))
                    if not ready
                ]
                kafka_logs = "\n".join(
                    f"--- node {node.node_id}:\n{tail(node.server_log)}" for node in nodes
                )
                raise StackStartError(
                    f"{' and '.join(pending)} not ready in time; last Kafka log lines:\n"
                    f"{kafka_logs}\n"
                    f"last Redis log lines:\n{tail(self.redis_log)}"
                )
            time.sleep(0.25)

    def _raise_if_dead(self, pid_file: PidFile, *logs: Path) -> None:
        pid = pid_file.read()
        if pid is not None and pid_alive(pid):
            return
        tails = "\n".join(f"--- {path}:\n{tail(path)}" for path in logs)
        raise StackStartError(f"{pid_file.service} (pid {pid}) exited during startup:\n{tails}")
