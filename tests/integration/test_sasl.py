"""The pipeline against a broker that demands SASL/SCRAM and enforces ACLs.

A second local Kafka, with a SASL_PLAINTEXT (SCRAM-SHA-512) listener and the StandardAuthorizer,
is configured only through driftline's settings (`client` pass-through, sasl_username,
sasl_password). Each service authenticates as its own principal with the least privilege the
operations guide grants (docs/operations.md): only the trainer may write models.registry.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)
from pydantic import SecretStr

from driftline.schemas import codec
from driftline.schemas.messages import InferenceResult
from driftline.schemas.topics import FEEDBACK_LABELS, INFERENCE_RESULTS, SENSOR_WINDOWS
from driftline.services.inference import service
from driftline.services.inference.settings import InferenceSettings
from driftline.services.localstack import LocalStack, StackPorts, StackStatus, free_port
from driftline.services.runtime.kafka import DeliveryTracker, admin, create_topics, producer
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.runtime.shutdown import StopFlag
from driftline.services.simulator import sensors
from driftline.services.simulator.settings import SimulatorSettings
from tests.integration.kafka_io import drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PASSWORDS = {
    name: secrets.token_hex(16)
    for name in ("admin", "trainer", "inference", "simulator", "features")
}
SCRAM_CLIENT = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512"}
PARTITIONS = 3


def _ports() -> StackPorts:
    while True:
        got = [free_port() for _ in range(4)]
        if len(set(got)) == 4:
            return StackPorts(kafka=got[0], controller=got[1], redis=got[2], sasl=got[3])


@pytest.fixture(scope="module")
def scram_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackStatus]:
    """Its own Kafka (and Redis) on free ports: SCRAM users, ACLs enforced, admin a super user."""
    stack = LocalStack(
        Path(tmp_path_factory.mktemp("scram-stack")),
        _ports(),
        scram_users=PASSWORDS,
        acl_super_users=["admin"],
        log=lambda _line: None,
    )
    status = stack.up()
    try:
        yield status
    finally:
        stack.down()


def as_user(
    status: StackStatus, user: str, prefix: str, password: str | None = None
) -> KafkaSettings:
    """What DRIFTLINE_KAFKA__CLIENT / __SASL_USERNAME / __SASL_PASSWORD would configure."""
    assert status.sasl_bootstrap_servers is not None
    return KafkaSettings(
        bootstrap_servers=status.sasl_bootstrap_servers,
        topic_prefix=prefix,
        client=SCRAM_CLIENT,
        sasl_username=user,
        sasl_password=SecretStr(password if password is not None else PASSWORDS[user]),
    )


def _acl(
    principal: str,
    kind: ResourceType,
    name: str,
    operation: AclOperation,
    pattern: ResourcePatternType = ResourcePatternType.LITERAL,
) -> AclBinding:
    return AclBinding(
        kind, name, pattern, f"User:{principal}", "*", operation, AclPermissionType.ALLOW
    )


def grant_least_privilege(kafka_admin: KafkaSettings) -> None:
    """The ACLs of docs/operations.md for the principals this test runs, on its topic prefix."""
    t = kafka_admin.topics
    topic, group = ResourceType.TOPIC, ResourceType.GROUP
    read, write = AclOperation.READ, AclOperation.WRITE
    bindings = [
        # The trainer is the one writer of the registry (it also reads it, for the champion).
        _acl("trainer", topic, t.models_registry, read),
        _acl("trainer", topic, t.models_registry, write),
        _acl("trainer", group, "driftline-registry-reader", read),
        # ... through the publish lease, a transactional id per model (trainer/publish.py).
        _acl(
            "trainer",
            ResourceType.TRANSACTIONAL_ID,
            f"{t.name('')}driftline-registry-",
            write,
            ResourcePatternType.PREFIXED,
        ),
        _acl(
            "trainer",
            ResourceType.TRANSACTIONAL_ID,
            f"{t.name('')}driftline-registry-",
            AclOperation.DESCRIBE,
            ResourcePatternType.PREFIXED,
        ),
        # Inference reads its input and the registry, writes results and dead letters.
        _acl("inference", topic, t.sensor_windows, read),
        _acl("inference", topic, t.models_registry, read),
        _acl("inference", topic, t.inference_results, write),
        _acl("inference", topic, t.dlq(SENSOR_WINDOWS), write),
        # Its group (and the registry reader's) carry the deployment prefix.
        _acl(
            "inference",
            group,
            f"{t.name('')}driftline-inference-",
            read,
            ResourcePatternType.PREFIXED,
        ),
        # Producers write their input topic only.
        _acl("simulator", topic, t.sensor_windows, write),
    ]
    client = admin(kafka_admin)  # held until the futures resolve: a collected client cancels them
    for future in client.create_acls(bindings, request_timeout=30).values():
        future.result(timeout=30)
    _wait_until_in_force(client, bindings)


def _wait_until_in_force(client: Any, bindings: list[AclBinding]) -> None:
    """ACLs reach the authorizer through the metadata log: wait until it lists them all, since
    a transactional producer refused once (before they arrived) is fatally refused."""
    everything = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    deadline = time.monotonic() + 30
    while True:
        listed = set(client.describe_acls(everything, request_timeout=10).result())
        if all(b in listed for b in bindings) or time.monotonic() > deadline:
            break
        time.sleep(0.2)


def test_a_wrong_password_is_refused(scram_stack: StackStatus) -> None:
    errors: list[KafkaError] = []
    wrong = as_user(scram_stack, "admin", "x.", password="not-" + PASSWORDS["admin"])
    client = Producer(wrong.client_config(error_cb=errors.append, log_level=0))
    with pytest.raises(KafkaException):
        client.list_topics(timeout=2)
    client.poll(1)  # serves the error callbacks
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    right = as_user(scram_stack, "admin", "x.")
    assert len(admin(right).list_topics(timeout=10).brokers) == 1


def test_the_pipeline_runs_over_sasl_scram_and_only_the_trainer_writes_the_registry(
    scram_stack: StackStatus, tiny_sensor_model: object, tmp_path: Path
) -> None:
    from driftline.schemas.contracts import INSULATOR_CLASSES, MODEL_NAMES
    from driftline.schemas.messages import STATUS_CHAMPION, Lineage
    from driftline.trainer.bootstrap import TrainedModel
    from driftline.trainer.publish import publish_version

    prefix = f"s{uuid.uuid4().hex[:8]}."
    kafka_admin = as_user(scram_stack, "admin", prefix)
    create_topics(kafka_admin, partitions=PARTITIONS)
    grant_least_privilege(kafka_admin)

    # The inference principal may read the registry but never write it.
    denied = DeliveryTracker()
    rogue = producer(as_user(scram_stack, "inference", prefix), **{"message.timeout.ms": 15000})
    rogue.produce(
        kafka_admin.topics.models_registry, key=b"insulator-sensor", value=b"x", on_delivery=denied
    )
    rogue.flush(30)
    assert denied.delivered == 0
    assert any("authoriz" in e.lower() for e in denied.errors), denied.errors

    # The trainer principal publishes version 1.
    assert isinstance(tiny_sensor_model, TrainedModel)
    champion = publish_version(
        kafka=as_user(scram_stack, "trainer", prefix),
        artifact_root=(tmp_path / "artifacts").as_uri(),
        name=MODEL_NAMES["sensor"],
        version=1,
        modality="sensor",
        exported=tiny_sensor_model.exported,
        model=tiny_sensor_model.model,
        classes=list(INSULATOR_CLASSES),
        metrics={"holdout_macro_f1": tiny_sensor_model.report.holdout_macro_f1},
        lineage=Lineage(source="test"),
        status=STATUS_CHAMPION,
    )

    stop = StopFlag()
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            service.run(
                InferenceSettings(
                    kafka=as_user(scram_stack, "inference", prefix),
                    max_batch=128,
                    max_wait_ms=20,
                    registry_timeout_s=30,
                ),
                stop,
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        n = 600
        report = sensors.run(
            SimulatorSettings(
                kafka=as_user(scram_stack, "simulator", prefix), count=n, rate=3000, seed=5
            ),
            progress=False,
        )
        assert report.sent == n
        records = drain(kafka_admin, kafka_admin.topics.inference_results, expect=n)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive(), "the consumer did not stop"
    assert not errors, errors
    results = [codec.decode(InferenceResult, m.value()) for m in records]
    assert len({r.event_id for r in results}) == n == len(results)
    assert {(r.model_name, r.model_version) for r in results} == {(champion.name, champion.version)}


def grant_features(kafka_admin: KafkaSettings) -> None:
    """docs/operations.md's grants for the features principal, on this test's topic prefix."""
    t = kafka_admin.topics
    topic, group = ResourceType.TOPIC, ResourceType.GROUP
    prefixed = ResourcePatternType.PREFIXED
    bindings = [
        *(
            _acl("features", topic, name, op)
            for name in (
                t.inference_results,
                t.sensor_windows,
                t.camera_images,
                t.feedback_labels,
                t.models_registry,
            )
            for op in (AclOperation.READ, AclOperation.DESCRIBE)
        ),
        *(
            _acl("features", topic, name, AclOperation.WRITE)
            for name in (
                t.training_windows,
                t.drift_signals,
                t.dlq(FEEDBACK_LABELS),
                t.dlq(INFERENCE_RESULTS),
            )
        ),
        # The faust app's own topics (join, changelogs) and group carry the app id.
        _acl("features", topic, f"{t.name('')}driftline-features", AclOperation.ALL, prefixed),
        _acl("features", group, f"{t.name('')}driftline-features", AclOperation.ALL, prefixed),
        _acl("features", group, "driftline-features", AclOperation.READ, prefixed),
    ]
    client = admin(kafka_admin)
    for future in client.create_acls(bindings, request_timeout=30).values():
        future.result(timeout=30)


def test_the_features_app_reads_writes_and_joins_over_sasl_scram(
    scram_stack: StackStatus, tmp_path: Path
) -> None:
    import json

    import redis

    from tests.integration.test_features import (
        FeaturesProcess,
        base_minute,
        produce_results,
        random_results,
        sensor_windows,
    )

    prefix = f"f{uuid.uuid4().hex[:8]}."
    kafka_admin = as_user(scram_stack, "admin", prefix)
    create_topics(kafka_admin, partitions=PARTITIONS)
    grant_features(kafka_admin)
    n = 300
    results = random_results(sensor_windows(n, base_minute(), seed=3, step_ms=250), seed=3)
    produce_results(kafka_admin, results)  # the admin stands in for inference here

    key_prefix = f"{prefix}:"
    features = as_user(scram_stack, "features", prefix)
    app = FeaturesProcess(
        features,
        scram_stack.redis_url,
        key_prefix,
        tmp_path / "features.log",
        {
            "DRIFTLINE_KAFKA__CLIENT": json.dumps(SCRAM_CLIENT),
            "DRIFTLINE_KAFKA__SASL_USERNAME": "features",
            "DRIFTLINE_KAFKA__SASL_PASSWORD": PASSWORDS["features"],
        },
    )
    try:
        app.start()  # ready means every agent has its partitions: faust authenticated
        app.wait(
            lambda: app.metric("driftline_feature_events_total", outcome="accepted") >= n,
            90,
            "the results to be folded into statistics",
        )
        rds = redis.Redis.from_url(scram_stack.redis_url, decode_responses=True)
        try:
            app.wait(
                lambda: any(True for _ in rds.scan_iter(match=f"{key_prefix}stats:*", count=100)),
                30,
                "statistics in Redis",
            )
        finally:
            rds.close()
    finally:
        app.stop()
