"""Run a real Kafka (KRaft; one node or a cluster) and Redis locally, without Docker."""

from __future__ import annotations

from driftline.services.localstack.errors import (
    PortInUseError,
    PrerequisiteMissing,
    StackStartError,
)
from driftline.services.localstack.kafka import (
    KAFKA_JVM_FLAGS,
    KAFKA_MESSAGE_MAX_BYTES,
    KAFKA_VERSION,
    MIN_JAVA_MAJOR,
    SCALA_VERSION,
    default_jar_cache,
)
from driftline.services.localstack.paths import default_data_dir, deploy_dir
from driftline.services.localstack.ports import HOST, StackPorts, free_port
from driftline.services.localstack.stack import LocalStack, StackStatus

__all__ = [
    "HOST",
    "KAFKA_JVM_FLAGS",
    "KAFKA_MESSAGE_MAX_BYTES",
    "KAFKA_VERSION",
    "MIN_JAVA_MAJOR",
    "SCALA_VERSION",
    "LocalStack",
    "PortInUseError",
    "PrerequisiteMissing",
    "StackPorts",
    "StackStartError",
    "StackStatus",
    "default_data_dir",
    "default_jar_cache",
    "deploy_dir",
    "free_port",
]
