"""`driftline doctor` against the real broker and Redis: it passes a healthy deployment and
names what is wrong in a broken one (a missing topic, a champion that does not verify, Redis
or a service unreachable, no broker), with a non-zero exit.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from driftline.schemas.contracts import INSULATOR_CLASSES, MODEL_NAMES
from driftline.schemas.messages import (
    MODALITIES,
    STATUS_CHAMPION,
    Lineage,
    ModelVersion,
    TensorSpec,
)
from driftline.schemas.topics import SENSOR_WINDOWS, all_specs
from driftline.services.cli import main
from driftline.services.localstack import free_port
from driftline.services.runtime import registry
from driftline.services.runtime.artifacts import FsspecArtifactStore, sha256_hex
from driftline.services.runtime.kafka import admin, create_topics
from driftline.services.runtime.metrics import Health, serve
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.runtime.signing import generate_keypair, key_id, sign
from tests.integration.conftest import Endpoints

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@dataclass
class Deployment:
    kafka: KafkaSettings
    redis_url: str
    artifact_root: str
    public_key: Path
    champions: dict[str, ModelVersion]


def _champion(
    root: str, modality: str, version: int, private: bytes, public: bytes
) -> ModelVersion:
    """A signed champion whose artifact is in the store (bytes only: doctor never runs it)."""
    name = MODEL_NAMES[modality]
    data = f"not really onnx: {name} v{version}".encode()
    uri = FsspecArtifactStore(root).put(f"{name}/v{version}.onnx", data)
    mv = ModelVersion(
        name=name,
        version=version,
        modality=modality,
        artifact_uri=uri,
        sha256=sha256_hex(data),
        inputs=[TensorSpec(name="x", dtype="float32", shape=[-1, 4])],
        outputs=[TensorSpec(name="probabilities", dtype="float32", shape=[-1, 4])],
        classes=list(INSULATOR_CLASSES),
        lineage=Lineage(source="test"),
        status=STATUS_CHAMPION,
        created_time_ms=1,
    )
    return msgspec.structs.replace(mv, signature=sign(private, mv), signing_key_id=key_id(public))


def _deploy(
    endpoints: Endpoints, tmp_path: Path, *, skip: str | None = None
) -> Iterator[Deployment]:
    kafka = KafkaSettings(
        bootstrap_servers=endpoints.bootstrap_servers, topic_prefix=f"doc{uuid.uuid4().hex[:8]}."
    )
    create_topics(kafka, [spec for spec in all_specs() if spec.base != skip])
    private, public = generate_keypair()
    public_path = tmp_path / "public.pem"
    public_path.write_bytes(public)
    root = (tmp_path / "artifacts").as_uri()
    champions = {}
    for modality in MODALITIES:
        mv = _champion(root, modality, 1, private, public)
        registry.publish(kafka, kafka.topics.models_registry, mv)
        champions[modality] = mv
    yield Deployment(kafka, endpoints.redis_url, root, public_path, champions)
    client = admin(kafka)
    mine = [t for t in client.list_topics(timeout=10).topics if t.startswith(kafka.topic_prefix)]
    for future in client.delete_topics(mine, operation_timeout=30).values():
        future.result(timeout=30)


@pytest.fixture
def deployment(endpoints: Endpoints, tmp_path: Path) -> Iterator[Deployment]:
    yield from _deploy(endpoints, tmp_path)


@pytest.fixture
def service_url() -> Iterator[dict[str, str]]:
    """Two services' metrics endpoints: one ready, one not."""
    servers = {
        state: serve(CollectorRegistry(), Health(lambda ok=ok: ok), free_port(), "127.0.0.1")
        for state, ok in (("ready", True), ("not ready", False))
    }
    yield {state: f"http://127.0.0.1:{s.server_address[1]}" for state, s in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


def doctor(
    d: Deployment, capsys: pytest.CaptureFixture[str], *extra: str, redis_url: str | None = None
) -> tuple[int, list[str]]:
    code = main(
        [
            "doctor",
            "--bootstrap-servers",
            d.kafka.bootstrap_servers,
            "--topic-prefix",
            d.kafka.topic_prefix,
            "--redis-url",
            redis_url or d.redis_url,
            "--artifact-root",
            d.artifact_root,
            "--public-key",
            str(d.public_key),
            *extra,
        ]
    )
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out.splitlines()


def failing(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("FAIL")]


def test_a_healthy_deployment_passes_every_check(
    deployment: Deployment, service_url: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = doctor(deployment, capsys, "--service", service_url["ready"])
    assert code == 0, "\n".join(lines)
    *checks, summary = lines
    assert all(line.startswith("OK") for line in checks), "\n".join(lines)
    assert sum(line.startswith("OK    topic ") for line in checks) == len(all_specs())
    for modality in MODALITIES:
        assert any(
            f"champion {MODEL_NAMES[modality]}: v1 " in line and "signature verified" in line
            for line in checks
        )
    assert summary.startswith("doctor: all is well: 0 FAIL, 0 WARN")

    code, lines = doctor(deployment, capsys, "--json")
    report = json.loads("\n".join(lines))
    assert code == 0
    assert report["ok"] is True
    assert report["counts"]["FAIL"] == 0
    assert {f["check"] for f in report["findings"]} == {"kafka", "topic", "champion", "redis"}


def _set_config(kafka: KafkaSettings, topic: str, key: str, value: str) -> None:
    """Change a topic's setting and wait until the broker describes it so."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
    )

    client = admin(kafka)
    entry = ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    for future in client.incremental_alter_configs([resource]).values():
        future.result(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        described = client.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
        (entries,) = [f.result(timeout=30) for f in described.values()]
        if entries[key].value == value:
            return
        time.sleep(0.2)
    raise AssertionError(f"{topic} {key} never became {value}")


def test_a_missing_or_misconfigured_topic_is_named_with_what_to_do(
    endpoints: Endpoints, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for d in _deploy(endpoints, tmp_path, skip=SENSOR_WINDOWS):
        topics = d.kafka.topics
        _set_config(d.kafka, topics.models_registry, "cleanup.policy", "delete")
        _set_config(d.kafka, topics.camera_images, "retention.ms", str(24 * 3600 * 1000))
        code, lines = doctor(d, capsys)
        assert code == 1
        missing, registry_line = failing(lines)
        assert missing == (
            f"FAIL  topic {topics.sensor_windows}: missing: run "
            f"`driftline topics create --topic-prefix {d.kafka.topic_prefix}`"
        )
        assert registry_line.startswith(
            f"FAIL  topic {topics.models_registry}: cleanup.policy is delete (old model versions"
        )
        assert f"--entity-name {topics.models_registry} --add-config cleanup.policy=compact`" in (
            registry_line
        )
        assert [line for line in lines if line.startswith("WARN")] == [
            f"WARN  topic {topics.camera_images}: retention is 1 d, needs 32 d (6 partitions, "
            f"replication 1, delete, retention 1 d): `kafka-configs.sh --bootstrap-server "
            f"{d.kafka.bootstrap_servers} --alter --entity-type topics --entity-name "
            f"{topics.camera_images} --add-config retention.ms={32 * 24 * 3600 * 1000}`"
        ]
        assert lines[-1].startswith("doctor: something is wrong: 2 FAIL, 1 WARN")


def test_a_champion_that_does_not_verify_is_named_with_the_reason(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    d = deployment
    # The image champion's file is changed after publishing; the sensor champion's is gone.
    Path(d.champions["image"].artifact_uri.removeprefix("file://")).write_bytes(b"tampered")
    gone = msgspec.structs.replace(
        d.champions["sensor"], version=2, artifact_uri=f"{d.artifact_root}/nowhere/v2.onnx"
    )
    registry.publish(d.kafka, d.kafka.topics.models_registry, gone)
    code, lines = doctor(d, capsys)
    assert code == 1
    bad = failing(lines)
    assert len(bad) == 2, "\n".join(lines)
    sensor, image = (next(line for line in bad if MODEL_NAMES[m] in line) for m in MODALITIES)
    assert "v2 is refused (fetch)" in sensor
    assert "nowhere/v2.onnx" in sensor
    assert "v1 is refused (sha256)" in image
    assert "publish it again" in image
    assert "`driftline models rollback --model image`" in image

    # A champion signed with a key that is not the one the consumers verify with.
    forger, forger_public = generate_keypair()
    forged = _champion(d.artifact_root, "image", 3, forger, forger_public)
    registry.publish(d.kafka, d.kafka.topics.models_registry, forged)
    code, lines = doctor(d, capsys)
    assert code == 1
    assert any(
        "insulator-image: v3 is refused (signature)" in line and "DRIFTLINE_PUBLIC_KEY" in line
        for line in failing(lines)
    ), "\n".join(lines)


def test_unreachable_redis_services_and_brokers_are_named(
    deployment: Deployment, service_url: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    dead = free_port()
    code, lines = doctor(
        deployment,
        capsys,
        "--service",
        service_url["ready"],
        "--service",
        service_url["not ready"],
        redis_url=f"redis://:secret@127.0.0.1:{dead}/0",
    )
    assert code == 1
    bad = failing(lines)
    assert len(bad) == 2, "\n".join(lines)
    assert bad[0].startswith(f"FAIL  redis redis://127.0.0.1:{dead}/0: unreachable")
    assert "secret" not in "\n".join(lines)
    assert bad[1].startswith(f"FAIL  service {service_url['not ready']}/readyz: not ready")

    nobody = f"127.0.0.1:{free_port()}"
    code, lines = doctor(deployment, capsys, "--bootstrap-servers", nobody, "--timeout-s", "2")
    assert code == 1
    assert failing(lines)[0].startswith(f"FAIL  kafka {nobody}: no broker answered in 2.")
    assert not any(" topic " in line or "champion" in line for line in lines)


def test_a_public_key_that_cannot_be_read_is_named(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = doctor(deployment, capsys, "--public-key", str(deployment.public_key) + ".gone")
    assert code == 1
    (bad,) = failing(lines)
    assert bad.startswith("FAIL  registry public key: cannot be read ([Errno 2]")
    assert sum("signature not checked" in line for line in lines) == len(MODALITIES)
