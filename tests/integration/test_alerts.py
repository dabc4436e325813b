"""The alerting consumer on the real Kafka: debounce, cooldown, webhook, dead letters, replay."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry
from typing_extensions import override

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.contracts import INSULATOR_CLASSES
from driftline.schemas.messages import Alert, InferenceResult
from driftline.schemas.topics import INFERENCE_RESULTS
from driftline.services.alerts import service
from driftline.services.alerts.settings import AlertsSettings
from driftline.services.core.alerting import alert_id
from driftline.services.runtime import deadletters
from driftline.services.runtime.kafka import DeliveryTracker, flush_or_raise, producer
from driftline.services.runtime.settings import KafkaSettings
from tests.integration.kafka_io import drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

T0_MS = 1_700_000_000_000
CODE = {"H": "healthy", "C": "contaminated", "K": "cracked", "X": "flashover_damaged"}
AVRO: h.HeaderList = [(h.CONTENT_TYPE, h.CONTENT_TYPE_AVRO.encode())]


def result(asset: str, code: str, t_s: float) -> InferenceResult:
    cls = CODE[code]
    probs = np.full(len(INSULATOR_CLASSES), 0.02, dtype="<f4")
    probs[INSULATOR_CLASSES.index(cls)] = 0.94
    return InferenceResult(
        event_id=f"{asset}@{t_s:g}",
        asset_id=asset,
        modality="sensor",
        model_name="insulator-sensor",
        model_version=2,
        classes=list(INSULATOR_CLASSES),
        probabilities=probs.tobytes(),
        predicted_class=cls,
        confidence=0.94,
        event_time_ms=T0_MS + int(t_s * 1000),
        scored_time_ms=T0_MS + int(t_s * 1000) + 5,
    )


def publish(
    kafka: KafkaSettings, results: list[InferenceResult], extra: Sequence[tuple[str, bytes]] = ()
) -> dict[str, tuple[int, int]]:
    """Produce results (and raw records) in order; returns event id -> (partition, offset)."""
    prod = producer(kafka)
    tracker = DeliveryTracker()
    where: dict[str, tuple[int, int]] = {}

    def reporter(event_id: str) -> Callable[[Any, Any], None]:
        def report(err: Any, msg: Any) -> None:
            tracker(err, msg)
            if err is None:
                where[event_id] = (msg.partition(), msg.offset())

        return report

    topic = kafka.topics.inference_results
    for r in results:
        prod.produce(
            topic,
            key=r.asset_id,
            value=codec.encode(r),
            headers=AVRO,
            on_delivery=reporter(r.event_id),
        )
    for key, value in extra:
        prod.produce(topic, key=key, value=value, on_delivery=tracker)
    flush_or_raise(prod, tracker)
    return where


@dataclass
class Webhook:
    """A real HTTP endpoint on loopback that answers `failure` (503) to its first `fail_first`
    POSTs."""

    fail_first: int
    failure: int = 503
    requests: list[tuple[int, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with hook.lock:
                    status = hook.failure if len(hook.requests) < hook.fail_first else 200
                    hook.requests.append((status, dict(self.headers), json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            @override
            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler


@contextlib.contextmanager
def serving(hook: Webhook) -> Iterator[str]:
    """The webhook on a loopback port while the block runs; yields its URL (with a token)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), hook.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/alerts?token=s3cret-token"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def webhook() -> Iterator[tuple[Webhook, str]]:
    hook = Webhook(fail_first=2)
    with serving(hook) as url:
        yield hook, url


def closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run_in_thread(
    settings: AlertsSettings, registry: CollectorRegistry
) -> tuple[threading.Event, Callable[[], None]]:
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            service.run(settings, stop.is_set, metrics_registry=registry)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="alerts-under-test")
    thread.start()

    def finish() -> None:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the alerts consumer did not stop"
        assert not errors, errors

    return stop, finish


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_alerts_debounce_cooldown_webhook_and_dead_letters(
    kafka: KafkaSettings, webhook: tuple[Webhook, str], caplog: pytest.LogCaptureFixture
) -> None:
    hook, url = webhook
    stream = (
        # flashover on every window: one critical alert at the 3rd, then 5 cooldown suppressions
        [result("flash", "X", t) for t in range(8)]
        # cracked in 3 of 5: a warning (critical would need 5 of 5)
        + [result("crack", c, t) for t, c in enumerate("KHKHK")]
        # never 3 faulty among 5 in a row: no alert
        + [result("ok", c, t) for t, c in enumerate("CHHCHHC")]
        # contaminated: a warning, one suppressed inside the 60 s cooldown, a second after it
        + [result("contam", "C", t) for t in (0, 1, 2, 30, 62)]
    )
    publish(kafka, stream, extra=[("bad", b"\x00 not an InferenceResult")])
    caplog.set_level(logging.INFO)
    settings = AlertsSettings(
        kafka=kafka,
        group_id=f"alerts-{uuid.uuid4().hex[:6]}",
        k=3,
        n=5,
        cooldown_s=60,
        max_wait_ms=20,
        webhook_url=url,
        webhook_retries=4,
        webhook_backoff_base_s=0.01,
        webhook_backoff_max_s=0.05,
        webhook_timeout_s=5,
    )
    registry = CollectorRegistry()
    _stop, finish = run_in_thread(settings, registry)
    source = kafka.topics.inference_results
    try:
        wait_for(
            lambda: (
                sample(registry, "driftline_events_consumed_total", topic=source) >= len(stream) + 1
            ),
            60,
            "every record to be consumed and committed",
        )
    finally:
        finish()

    records = drain(kafka, kafka.topics.alerts, expect=4, timeout_s=30, settle_s=1)
    alerts = sorted(
        (codec.decode(Alert, m.value()) for m in records), key=lambda a: a.raised_time_ms
    )
    by_asset = Counter(a.asset_id for a in alerts)
    assert by_asset == {"flash": 1, "crack": 1, "contam": 2}
    assert all(m.key() == codec.decode(Alert, m.value()).asset_id.encode() for m in records)
    got = {(a.asset_id, a.raised_time_ms - T0_MS): a for a in alerts}
    flash, crack = got[("flash", 2000)], got[("crack", 4000)]
    contam_1, contam_2 = got[("contam", 2000)], got[("contam", 62000)]
    assert (flash.severity, flash.predicted_class) == ("critical", "flashover_damaged")
    assert flash.evidence_event_ids == ["flash@0", "flash@1", "flash@2"]
    assert (crack.severity, crack.predicted_class) == ("warning", "cracked")
    assert crack.evidence_event_ids == ["crack@0", "crack@2", "crack@4"]
    assert contam_1.severity == contam_2.severity == "warning"
    assert contam_2.evidence_event_ids == [
        "contam@0",
        "contam@1",
        "contam@2",
        "contam@30",
        "contam@62",
    ]
    # Deterministic ids: the asset and the event that triggered the alert.
    assert flash.alert_id == alert_id("flash", "flash@2")
    assert contam_2.alert_id == alert_id("contam", "contam@62")
    assert (flash.model_name, flash.model_version) == ("insulator-sensor", 2)

    # Metrics: raised by severity, suppressed by reason, the dead letter.
    assert (
        sample(registry, "driftline_alerts_raised_total", severity="critical", reason="k_of_n") == 1
    )
    assert (
        sample(registry, "driftline_alerts_raised_total", severity="warning", reason="k_of_n") == 3
    )
    assert sample(registry, "driftline_alerts_suppressed_total", reason="cooldown") == 5 + 1
    assert sample(registry, "driftline_alerts_suppressed_total", reason="below_k") == 2 + 2 + 3 + 2
    assert sample(registry, "driftline_dead_letters_total", topic=source, reason="undecodable") == 1

    # The webhook: two 503s retried, then every alert delivered, each once, with its id.
    statuses = [status for status, _h, _b in hook.requests]
    assert statuses[:2] == [503, 503]
    assert statuses[2:] == [200] * 4
    assert hook.requests[0][2] == hook.requests[2][2]  # the same alert, retried
    delivered = {body["alert_id"] for status, _h, body in hook.requests if status == 200}
    assert delivered == {a.alert_id for a in alerts}
    assert all(hdrs["Idempotency-Key"] == body["alert_id"] for _s, hdrs, body in hook.requests)
    assert all(hdrs["Content-Type"] == "application/json" for _s, hdrs, _b in hook.requests)
    assert sample(registry, "driftline_webhook_deliveries_total", outcome="delivered") == 4
    assert sample(registry, "driftline_webhook_retries_total") == 2
    logged = caplog.text
    assert "retry 1/4" in logged
    assert "s3cret" not in logged
    assert "http://127.0.0.1" in logged  # the target, redacted

    # The bad record: dead-lettered with its reason, the stream went on.
    letters = drain(kafka, kafka.topics.dlq(INFERENCE_RESULTS), expect=1, timeout_s=30, settle_s=1)
    assert len(letters) == 1
    envelope = dict(letters[0].headers() or [])
    assert envelope["driftline-error-class"] == b"undecodable"
    assert envelope["driftline-service"] == b"alerts"
    assert letters[0].key() == b"bad"


def _commit(kafka: KafkaSettings, group: str, offsets: list[TopicPartition]) -> None:
    client = Consumer(kafka.client_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        client.commit(offsets=offsets, asynchronous=False)
    finally:
        client.close()


def test_restart_mid_stream_raises_the_same_alerts_with_the_same_ids(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    """At-least-once replay: after a restart from committed offsets half way through, the
    consumer rebuilds its state from the records before them and re-raises exactly the alerts
    of the uninterrupted run from there on, with the same ids; and SIGTERM exits 0."""
    rng = random.Random(3)
    stream = [
        result(f"asset-{a}", rng.choices("HCKX", weights=(6, 2, 1, 1))[0], t)
        for t in range(40)
        for a in range(8)
    ]
    where = publish(kafka, stream)
    rule = ["--k", "2", "--n", "3", "--cooldown-s", "5"]

    first_group = f"alerts-a-{uuid.uuid4().hex[:6]}"
    registry = CollectorRegistry()
    settings = AlertsSettings(
        kafka=kafka, group_id=first_group, k=2, n=3, cooldown_s=5, max_wait_ms=20
    )
    _stop, finish = run_in_thread(settings, registry)
    try:
        wait_for(
            lambda: (
                sample(
                    registry,
                    "driftline_events_consumed_total",
                    topic=kafka.topics.inference_results,
                )
                >= len(stream)
            ),
            60,
            "the first run to finish",
        )
    finally:
        finish()
    first = [codec.decode(Alert, m.value()) for m in drain(kafka, kafka.topics.alerts, expect=1)]
    assert len(first) > 10

    # A second group "crashed" half way: its offsets are committed at each partition's middle.
    per_partition = Counter(p for p, _o in where.values())
    middle = {p: n // 2 for p, n in per_partition.items()}
    second_group = f"alerts-b-{uuid.uuid4().hex[:6]}"
    source = kafka.topics.inference_results
    _commit(kafka, second_group, [TopicPartition(source, p, o) for p, o in middle.items()])
    triggers = [where[a.evidence_event_ids[-1]] for a in first]  # in order: the newest
    expected_again = [
        a for a, (p, offset) in zip(first, triggers, strict=True) if offset >= middle[p]
    ]
    assert 0 < len(expected_again) < len(first)

    env = {
        **os.environ,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "DRIFTLINE_LOG_LEVEL": "INFO",
    }
    log = tmp_path / "alerts.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "driftline.services.cli",
                "alerts",
                "--group-id",
                second_group,
                *rule,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        records = drain(
            kafka, kafka.topics.alerts, expect=len(first) + len(expected_again), timeout_s=60
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()[-3000:]

    counts = Counter(codec.decode(Alert, m.value()).alert_id for m in records)
    assert counts == Counter([a.alert_id for a in first] + [a.alert_id for a in expected_again])
    assert "rebuilding alert state" in log.read_text()


@pytest.mark.parametrize("down", ["http_500", "unreachable"])
def test_alerts_no_webhook_takes_are_dead_lettered_and_none_vanish(
    kafka: KafkaSettings,
    down: str,
) -> None:
    """A webhook that always answers 500, or that nobody listens on: every alert raised is on
    alerts.dlq with its reason before its input is committed, and counted; `driftline dlq
    inspect alerts` lists them and `replay` re-publishes them on alerts without calling the
    webhook again."""
    assets = [f"asset-{a}" for a in range(6)]
    stream = [result(asset, "X", t) for t in range(3) for asset in assets]
    publish(kafka, stream)
    hook = Webhook(fail_first=10**9, failure=500)
    with contextlib.ExitStack() as stack:
        if down == "http_500":
            url = stack.enter_context(serving(hook))
        else:
            url = f"http://127.0.0.1:{closed_port()}/hooks/alerts?token=s3cret-token"
        settings = AlertsSettings(
            kafka=kafka,
            group_id=f"alerts-{uuid.uuid4().hex[:6]}",
            k=3,
            n=5,
            max_wait_ms=20,
            webhook_url=url,
            webhook_retries=2,
            webhook_backoff_base_s=0.01,
            webhook_backoff_max_s=0.05,
            webhook_timeout_s=5,
        )
        registry = CollectorRegistry()
        _stop, finish = run_in_thread(settings, registry)
        source, alerts_dlq = kafka.topics.inference_results, kafka.topics.dlq("alerts")
        try:
            wait_for(
                lambda: (
                    sample(registry, "driftline_events_consumed_total", topic=source) >= len(stream)
                ),
                60,
                "every record to be consumed and committed",
            )
            records = drain(kafka, kafka.topics.alerts, expect=len(assets), settle_s=1)
            letters = drain(kafka, alerts_dlq, expect=len(assets), settle_s=1)

            # Not one alert vanished: each alert of the run is on alerts.dlq, once.
            alerts = {codec.decode(Alert, m.value()).alert_id: m for m in records}
            assert len(alerts) == len(records) == len(assets)
            assert Counter(codec.decode(Alert, m.value()).alert_id for m in letters) == Counter(
                list(alerts)
            )
            for letter in letters:
                envelope = dict(letter.headers() or [])
                alert = codec.decode(Alert, letter.value(), codec.content_type_of(envelope))
                original = alerts[alert.alert_id]
                assert letter.key() == original.key() == alert.asset_id.encode()
                assert letter.value() == original.value()
                assert envelope["driftline-error-class"] == b"webhook_failed"
                assert envelope["driftline-service"] == b"alerts"
                assert envelope["driftline-source-topic"] == kafka.topics.alerts.encode()
                assert envelope["driftline-source-partition"] == str(original.partition()).encode()
                assert envelope["driftline-source-offset"] == str(original.offset()).encode()
                message = envelope["driftline-error-message"].decode()
                assert ("HTTP 500" if down == "http_500" else "Error") in message, message
                assert "s3cret" not in message
            n = len(assets)
            assert (
                sample(registry, "driftline_alerts_dead_lettered_total", reason="webhook_failed")
                == n
            )
            assert sample(registry, "driftline_webhook_deliveries_total", outcome="failed") == n
            assert sample(registry, "driftline_events_produced_total", topic=alerts_dlq) == n
            if down == "http_500":
                assert {status for status, _h, _b in hook.requests} == {500}
                assert {b["alert_id"] for _s, _h, b in hook.requests} == set(alerts)

            # `driftline dlq inspect alerts`: every letter, with its reason.
            env = {
                **os.environ,
                "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
            }
            inspect = [sys.executable, "-m", "driftline.services.cli", "dlq", "inspect", "alerts"]
            listed = subprocess.run(
                [*inspect, "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert listed.returncode == 0, listed.stderr
            shown = [json.loads(line) for line in listed.stdout.splitlines()]
            assert len(shown) == n
            assert {x["reason"] for x in shown} == {"webhook_failed"}
            assert {x["content_type"] for x in shown} == {h.CONTENT_TYPE_AVRO}
            summary = subprocess.run(
                inspect, env=env, capture_output=True, text=True, timeout=60, check=False
            )
            assert summary.returncode == 0, summary.stderr
            assert f"{n} dead letters on {alerts_dlq}" in summary.stdout

            # Replay re-publishes them on alerts (for its consumers) and calls no webhook.
            calls = len(hook.requests)
            report = deadletters.replay(kafka, "alerts")
            assert (report.replayed, report.skipped) == (n, 0)
            assert report.by_topic == {kafka.topics.alerts: n}
            again = drain(kafka, kafka.topics.alerts, expect=2 * n, settle_s=2)
            assert Counter(codec.decode(Alert, m.value()).alert_id for m in again) == Counter(
                list(alerts) * 2
            )
            assert len(hook.requests) == calls
            assert deadletters.replay(kafka, "alerts").replayed == 0  # once only
        finally:
            finish()
