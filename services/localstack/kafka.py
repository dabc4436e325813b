"""The local Kafka node: Java and jar prerequisites, config, storage format, start, readiness."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from driftline.services.localstack.errors import PrerequisiteMissing, StackStartError
from driftline.services.localstack.paths import deploy_dir, state_dir
from driftline.services.localstack.ports import HOST, StackPorts
from driftline.services.localstack.processes import PidFile, cmdline, spawn, write_atomic

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

KAFKA_VERSION = "4.4.0"
SCALA_VERSION = "2.13"
MIN_JAVA_MAJOR = 17
KAFKA_JVM_FLAGS: tuple[str, ...] = (
    "-Xms256m",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
# Image events can be several MiB: allow 10 MiB payloads plus record/batch overhead.
KAFKA_MESSAGE_MAX_BYTES = 10 * 1024 * 1024 + 64 * 1024

# The optional SASL listener: SCRAM users are written into the metadata log at format time.
SCRAM_MECHANISM = "SCRAM-SHA-512"
SASL_LISTENER = "SASL_PLAINTEXT"
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
# StorageTool's --add-scram syntax has no escaping we rely on: keep names and passwords plain.
_SCRAM_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,128}")

_KAFKA_JAR = f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar"
_KAFKA_MAIN = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"
_JAR_RESOLVE_TIMEOUT_S = 900.0


def default_jar_cache() -> Path:
    """Kafka jar folder: env DRIFTLINE_JAR_CACHE, else the state dir's kafka-lib-<ver>.

    From a checkout that is <repo>/.driftline/kafka-lib-<ver> (what CI caches); installed, it
    is under $XDG_DATA_HOME/driftline (see paths.state_dir).
    """
    env = os.environ.get("DRIFTLINE_JAR_CACHE")
    return Path(env) if env else state_dir() / f"kafka-lib-{KAFKA_VERSION}"


def find_java() -> str:
    """Path of a java of at least MIN_JAVA_MAJOR: JAVA_HOME's, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = str(candidate) if candidate and candidate.is_file() else shutil.which("java")
    hint = "install a JDK (Debian: apt-get install openjdk-17-jre-headless)"
    if java is None:
        raise PrerequisiteMissing(f"Java {MIN_JAVA_MAJOR}+ not found on PATH: {hint}")
    try:
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PrerequisiteMissing(f"{java} -version failed ({exc}): {hint}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if match is None:
        raise PrerequisiteMissing(f"cannot read the Java version from {java} -version: {hint}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" style
        major = int(match.group(2))
    if major < MIN_JAVA_MAJOR:
        raise PrerequisiteMissing(
            f"Java {major} at {java} is too old, Kafka {KAFKA_VERSION} needs Java "
            f"{MIN_JAVA_MAJOR}+: {hint}, or point JAVA_HOME at one"
        )
    return java


def ensure_jars(jar_cache: Path, log: Callable[[str], None]) -> Path:
    """The jar folder, resolved once with Maven from the resources' pom.xml when missing."""
    if (jar_cache / _KAFKA_JAR).is_file():
        return jar_cache
    mvn = shutil.which("mvn")
    if mvn is None:
        raise PrerequisiteMissing(
            f"Maven (mvn) not found on PATH, needed once to fetch the Kafka {KAFKA_VERSION} "
            "jars: install Maven (Debian: apt-get install maven)"
        )
    pom = deploy_dir() / "pom.xml"
    if not pom.is_file():
        raise FileNotFoundError(f"{pom} is missing (set DRIFTLINE_DEPLOY_DIR?)")
    log(f"localstack: resolving Kafka {KAFKA_VERSION} jars with Maven (first run only)...")
    jar_cache.parent.mkdir(parents=True, exist_ok=True)
    # Resolve into a private folder and rename it into place, so that an interrupted run
    # never leaves a cache that holds the kafka jar but misses others.
    staging = jar_cache.with_name(f".{jar_cache.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_JAR_RESOLVE_TIMEOUT_S, check=False
        )
        if proc.returncode != 0 or not (staging / _KAFKA_JAR).is_file():
            output = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise StackStartError(
                f"Maven could not resolve the Kafka jars (exit {proc.returncode}): "
                f"{' '.join(cmd)}\n{output}"
            )
        try:
            os.rename(staging, jar_cache)
        except OSError:
            if not (jar_cache / _KAFKA_JAR).is_file():
                # An existing, incomplete folder: fill it in place.
                jar_cache.mkdir(parents=True, exist_ok=True)
                for jar in staging.iterdir():
                    shutil.copy2(jar, jar_cache / jar.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return jar_cache


def new_cluster_id() -> str:
    """A Kafka-style cluster id: a url-safe base64 uuid4 without padding (22 chars)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cid.startswith("-"):  # a leading '-' would be parsed as a CLI flag
            return cid


def check_scram_users(users: tuple[tuple[str, str], ...]) -> None:
    """Refuse SCRAM names and passwords that StorageTool's --add-scram syntax could misread."""
    for name, password in users:
        for what, value in (("name", name), ("password", password)):
            if not _SCRAM_TOKEN.fullmatch(value):
                raise ValueError(
                    f"SCRAM user {name!r}: the {what} must be 1-128 characters of "
                    "A-Z a-z 0-9 _ . - (passed to kafka-storage format --add-scram)"
                )


@dataclass(frozen=True)
class KafkaNode:
    """One combined broker+controller Kafka node of a stack data dir.

    A single-node stack (``voters`` empty) runs a dynamic (KIP-853) quorum of one, formatted
    with ``--standalone``. A cluster gives every node the static quorum ``voters`` ((node id,
    controller port) of each node), so three nodes elect a controller among themselves and
    survive the loss of any one; internal topics are then replicated three times with
    ``min.insync.replicas=2``.

    With ``scram_users`` and a ``StackPorts.sasl`` port, a SASL_PLAINTEXT listener with
    SCRAM-SHA-512 runs beside the PLAINTEXT one (which inter-broker and controller traffic keep,
    on loopback). With ``acl_super_users`` (None: off), the StandardAuthorizer enforces ACLs:
    only those principals and User:ANONYMOUS (the loopback PLAINTEXT listeners' principal, which
    the node itself needs) bypass them.
    """

    data_dir: Path
    log: Callable[[str], None]
    scram_users: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # passwords
    acl_super_users: tuple[str, ...] | None = None
    node_id: int = 1
    voters: tuple[tuple[int, int], ...] = ()

    @property
    def cluster_size(self) -> int:
        return max(1, len(self.voters))

    @property
    def server_properties(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "kafka-data"

    @property
    def stdout(self) -> Path:
        return self.data_dir / "kafka.out"

    @property
    def server_log(self) -> Path:
        return self.data_dir / "logs" / "server.log"

    @property
    def pid_file(self) -> PidFile:
        name = f"kafka node {self.node_id}" if self.voters else "kafka"
        return PidFile(name, self.data_dir / "kafka.pid", self.is_ours)

    def is_ours(self, pid: int) -> bool:
        """True if pid runs kafka.Kafka with this data dir's server.properties."""
        args = cmdline(pid)
        return _KAFKA_MAIN in args and str(self.server_properties) in args

    def _security_properties(self, ports: StackPorts) -> dict[str, str]:
        """Listener settings: PLAINTEXT and CONTROLLER, plus the SASL listener when asked for."""
        listeners = f"PLAINTEXT://{HOST}:{ports.kafka},CONTROLLER://{HOST}:{ports.controller}"
        advertised = f"PLAINTEXT://{HOST}:{ports.kafka}"
        protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        props: dict[str, str] = {}
        if ports.sasl is not None:
            sasl = f"{SASL_LISTENER}://{HOST}:{ports.sasl}"
            listeners, advertised = f"{listeners},{sasl}", f"{advertised},{sasl}"
            protocols += f",{SASL_LISTENER}:{SASL_LISTENER}"
            prefix = f"listener.name.{SASL_LISTENER.lower()}"
            props = {
                "sasl.enabled.mechanisms": SCRAM_MECHANISM,
                f"{prefix}.sasl.enabled.mechanisms": SCRAM_MECHANISM,
                f"{prefix}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                ),
            }
        if self.acl_super_users is not None:
            supers = ["User:ANONYMOUS", *(f"User:{u}" for u in self.acl_super_users)]
            props |= {
                "authorizer.class.name": STANDARD_AUTHORIZER,
                "super.users": ";".join(dict.fromkeys(supers)),
                "allow.everyone.if.no.acl.found": "false",
            }
        return {
            "listeners": listeners,
            "advertised.listeners": advertised,
            "listener.security.protocol.map": protocols,
            **props,
        }

    def write_server_properties(self, ports: StackPorts) -> None:
        replicas = str(min(3, self.cluster_size))
        min_isr = "2" if self.cluster_size >= 3 else "1"
        if self.voters:
            quorum = {
                "controller.quorum.voters": ",".join(
                    f"{node}@{HOST}:{port}" for node, port in self.voters
                )
            }
        else:  # a dynamic (KIP-853) quorum of one, initialised by `format --standalone`
            quorum = {"controller.quorum.bootstrap.servers": f"{HOST}:{ports.controller}"}
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            **self._security_properties(ports),
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            **quorum,
            "log.dirs": str(self.log_dir),
            "num.partitions": "1",
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": str(KAFKA_MESSAGE_MAX_BYTES),
            "replica.fetch.max.bytes": str(KAFKA_MESSAGE_MAX_BYTES),
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.retention.hours": "24",
            "log.segment.bytes": str(256 * 1024 * 1024),
        }
        body = "".join(f"{key}={value}\n" for key, value in props.items())
        write_atomic(
            self.server_properties,
            "# Generated by services/localstack/kafka.py; rewritten on every start.\n" + body,
        )

    def _java_base(self, java: str, libdir: Path) -> list[str]:
        log4j = deploy_dir() / "log4j2.properties"
        return [
            java,
            *KAFKA_JVM_FLAGS,
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={self.server_log.parent}",
            "-cp",
            f"{libdir}/*",
        ]

    def _format_storage(self, java: str, libdir: Path, cluster_id: str | None) -> None:
        cluster_id = cluster_id or new_cluster_id()
        self.log(
            f"localstack: formatting Kafka storage of node {self.node_id} (cluster id {cluster_id})"
        )
        cmd = [
            *self._java_base(java, libdir),
            _STORAGE_TOOL,
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.server_properties),
        ]
        if not self.voters:
            cmd.append("--standalone")
        check_scram_users(self.scram_users)
        # Local dev and CI only: the passwords are briefly visible in this tool's command line.
        for name, password in self.scram_users:
            cmd += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            # The command line may hold SCRAM passwords: report the tool's output only.
            raise StackStartError(
                f"formatting Kafka storage failed (exit {proc.returncode}):\n"
                + "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            )

    def start(
        self, java: str, libdir: Path, ports: StackPorts, cluster_id: str | None = None
    ) -> None:
        """Write the config, format storage on first start, spawn Kafka and record its pid.

        ``ports`` are this node's own (StackPorts.node); every node of a cluster is formatted
        with the same ``cluster_id``.
        """
        self.server_log.parent.mkdir(parents=True, exist_ok=True)
        self.write_server_properties(ports)
        if not (self.log_dir / "meta.properties").is_file():
            self._format_storage(java, libdir, cluster_id)
        cmd = [*self._java_base(java, libdir), _KAFKA_MAIN, str(self.server_properties)]
        pid = spawn(cmd, self.stdout, cwd=self.data_dir)
        self.pid_file.write(pid)
        sasl = f", SASL/SCRAM on {HOST}:{ports.sasl}" if ports.sasl is not None else ""
        node = f" node {self.node_id}" if self.voters else ""
        self.log(
            f"localstack: started Kafka {KAFKA_VERSION}{node} (pid {pid}) on "
            f"{HOST}:{ports.kafka}{sasl}"
        )


def make_admin(bootstrap: str) -> AdminClient | None:
    """A confluent_kafka AdminClient, or None when confluent_kafka is not installed."""
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        return None
    return AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 2000})


def broker_ready(admin: AdminClient | None, server_log: Path, brokers: int = 1) -> bool:
    """Metadata answered with every broker (or, without confluent_kafka, the broker logged
    up)."""
    if admin is None:
        try:
            text = server_log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
        return "Kafka Server started" in text
    try:
        metadata = admin.list_topics(timeout=2)
    except Exception:  # KafkaException while the broker is still starting
        return False
    return len(metadata.brokers) >= brokers
