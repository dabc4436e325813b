"""`driftline doctor`'s Kafka checks: the brokers answer; every topic exists, is healthy, and
is configured as the topic table says."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from driftline.schemas.topics import MODELS_REGISTRY, TopicSpec, all_specs
from driftline.services.commands.deployment_checks import FAIL, OK, WARN, Finding, topics_create

if TYPE_CHECKING:
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        ClusterMetadata,
        TopicMetadata,
    )

    from driftline.services.runtime.settings import KafkaSettings


def check_brokers(
    client: AdminClient, kafka: KafkaSettings, timeout_s: float
) -> tuple[Finding, ClusterMetadata | None]:
    """The brokers answer a metadata request within `timeout_s`; how many, which controller."""
    from confluent_kafka import KafkaError, KafkaException

    where = kafka.bootstrap_servers
    start = time.monotonic()
    try:
        meta = client.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        waited = time.monotonic() - start
        err = exc.args[0] if exc.args else exc
        reason = err.str() if isinstance(err, KafkaError) else str(err)
        return Finding(
            "kafka",
            where,
            FAIL,
            f"no broker answered in {waited:.1f} s ({reason}); "
            "topics and the model registry were not checked",
            "is Kafka running and reachable? `driftline stack up` starts a local one; "
            "--bootstrap-servers or DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS points elsewhere",
        ), None
    waited = time.monotonic() - start
    ids = ", ".join(str(b) for b in sorted(meta.brokers))
    count = len(meta.brokers)
    detail = (
        f"{count} broker{'s' if count != 1 else ''} (id {ids}), controller {meta.controller_id}, "
        f"cluster {meta.cluster_id}; answered in {waited:.2f} s"
    )
    return Finding("kafka", where, OK, detail), meta


def _describe_configs(
    client: AdminClient, names: list[str], timeout_s: float
) -> dict[str, dict[str, str] | str]:
    """Every topic's configuration by name, or the error that kept it from being read."""
    from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

    if not names:
        return {}
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in names]
    out: dict[str, dict[str, str] | str] = {}
    futures = client.describe_configs(resources, request_timeout=timeout_s)
    for resource, future in futures.items():
        try:
            entries = future.result(timeout=timeout_s)
        except Exception as exc:  # KafkaException, or the future's own TimeoutError
            out[resource.name] = str(exc.args[0] if exc.args else exc)
            continue
        out[resource.name] = {k: str(e.value) for k, e in entries.items() if e.value is not None}
    return out


def _duration(ms: int) -> str:
    if ms < 0:
        return "forever"
    if ms % (24 * 3600 * 1000) == 0:
        return f"{ms // (24 * 3600 * 1000)} d"
    if ms >= 3600 * 1000:
        return f"{ms / 3600_000:.1f} h"
    return f"{ms / 1000:.0f} s"


def _config_problems(spec: TopicSpec, conf: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """What differs from the topic table in a way that matters, and the settings that fix it."""
    wanted = spec.config()
    problems: list[str] = []
    fixes: dict[str, str] = {}
    policy = conf.get("cleanup.policy", "")
    if set(policy.split(",")) != {spec.cleanup_policy}:
        why = (
            "old model versions and the champion pointers would be deleted"
            if spec.base == MODELS_REGISTRY
            else "the table says " + spec.cleanup_policy
        )
        problems.append(f"cleanup.policy is {policy or '?'} ({why})")
        fixes["cleanup.policy"] = spec.cleanup_policy
    if "delete" in policy.split(","):
        want, have = int(wanted["retention.ms"]), int(conf.get("retention.ms", "-1"))
        if have >= 0 and (want < 0 or have < want):
            problems.append(f"retention is {_duration(have)}, needs {_duration(want)}")
            fixes["retention.ms"] = wanted["retention.ms"]
    want_bytes, have_bytes = int(wanted["max.message.bytes"]), int(conf.get("max.message.bytes", 0))
    if have_bytes and have_bytes < want_bytes:
        problems.append(
            f"max.message.bytes {have_bytes} < {want_bytes}: larger records are refused"
        )
        fixes["max.message.bytes"] = wanted["max.message.bytes"]
    return problems, fixes


def _topic_finding(
    spec: TopicSpec,
    name: str,
    tmeta: TopicMetadata | None,
    conf: dict[str, str] | str | None,
    brokers: int,
    kafka: KafkaSettings,
) -> Finding:
    if tmeta is None:
        return Finding("topic", name, FAIL, "missing", topics_create(kafka))
    if tmeta.error is not None:
        return Finding("topic", name, FAIL, f"in error: {tmeta.error}", "check the brokers' logs")
    parts = tmeta.partitions.values()
    rf = min((len(p.replicas) for p in parts), default=0)
    policy = conf.get("cleanup.policy", "?") if isinstance(conf, dict) else "?"
    shape = f"{len(parts)} partition{'s' if len(parts) != 1 else ''}, replication {rf}, {policy}"
    if isinstance(conf, dict) and "delete" in policy.split(","):
        shape += f", retention {_duration(int(conf.get('retention.ms', '-1')))}"
    fails: list[str] = []
    warns: list[str] = []
    actions: list[str] = []
    leaderless = sorted(p.id for p in parts if p.leader < 0)
    if leaderless:
        fails.append(f"partitions {leaderless} have no leader")
        actions.append("check that their replicas' brokers are up")
    min_isr = int(conf.get("min.insync.replicas", "1")) if isinstance(conf, dict) else 1
    if rf < min_isr:
        fails.append(f"replication {rf} < min.insync.replicas {min_isr}: every write is refused")
        actions.append("lower min.insync.replicas or add replicas")
    lagging = sorted(p.id for p in parts if p.leader >= 0 and len(p.isrs) < len(p.replicas))
    if lagging:
        warns.append(f"partitions {lagging} are under-replicated")
        actions.append("a replica's broker is down or behind")
    if rf == 1 and brokers > 1:
        warns.append(f"replication 1 on a {brokers}-broker cluster: losing a broker loses data")
        actions.append("raise it with kafka-reassign-partitions.sh")
    if spec.base == MODELS_REGISTRY and len(parts) != 1:
        warns.append("the registry needs 1 partition to be read back in the order written")
        actions.append("re-create it with 1 partition and publish the champions again")
    if isinstance(conf, str):
        warns.append(f"its configuration could not be read ({conf})")
        actions.append("grant this principal DescribeConfigs on the topic")
    elif conf is not None:
        problems, fixes = _config_problems(spec, conf)
        bad = spec.base == MODELS_REGISTRY and "cleanup.policy" in fixes
        (fails if bad else warns).extend(problems)
        if fixes:
            settings = ",".join(f"{k}={v}" for k, v in fixes.items())
            actions.append(
                f"`kafka-configs.sh --bootstrap-server {kafka.bootstrap_servers} --alter "
                f"--entity-type topics --entity-name {name} --add-config {settings}`"
            )
    if not fails and not warns:
        return Finding("topic", name, OK, shape)
    status = FAIL if fails else WARN
    return Finding(
        "topic", name, status, f"{'; '.join(fails + warns)} ({shape})", "; ".join(actions)
    )


def check_topics(
    client: AdminClient,
    meta: ClusterMetadata,
    kafka: KafkaSettings,
    timeout_s: float,
    label_retention_ms: int | None = None,
) -> list[Finding]:
    """Every topic of the table and its dead-letter topics: present, healthy, configured so."""
    topics = kafka.topics
    specs = all_specs(label_retention_ms)
    names = {spec.base: topics.name(spec.base) for spec in specs}
    present = [n for n in names.values() if n in meta.topics]
    configs = _describe_configs(client, present, timeout_s)
    return [
        _topic_finding(
            spec,
            names[spec.base],
            meta.topics.get(names[spec.base]),
            configs.get(names[spec.base]),
            len(meta.brokers),
            kafka,
        )
        for spec in specs
    ]
