"""Load generation and result reading for latency runs, in processes of their own.

The system under test (the consumer) runs in the bench process; the world around it (a paced
producer and a results reader) runs in separate processes, so their Python work never holds
the consumer's GIL. Both share the wall clock: latency = reader's arrival time minus the
event's scheduled send time (the sender keeps to its schedule; lateness is reported).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from driftline.schemas import codec
from driftline.schemas.messages import CameraImage, InferenceResult, SensorWindow

CTX = mp.get_context("spawn")
# (warm event ids, planned send times, arrival times, results' broker timestamps) -> stages
Breakdown = Callable[
    [list[str], dict[str, float], dict[str, float], dict[str, float]], dict[str, Any]
]


def _sender(
    bootstrap: str,
    topic: str,
    base: list[bytes],
    modality: str,
    rate: float,
    seconds: float,
    start_at: float,
    run_id: str,
    conn: Connection,
) -> None:
    import msgspec

    from driftline.schemas import headers as h
    from driftline.services.runtime.kafka import producer
    from driftline.services.runtime.settings import KafkaSettings

    kind: type[SensorWindow] | type[CameraImage] = (
        SensorWindow if modality == "sensor" else CameraImage
    )
    decoded = [codec.decode(kind, v) for v in base]
    n = int(rate * seconds)
    planned = [start_at + i / rate for i in range(n)]
    values = [
        codec.encode(
            msgspec.structs.replace(
                decoded[i % len(decoded)],
                event_id=f"{run_id}-{i}",
                event_time_ms=int(planned[i] * 1000),
            )
        )
        for i in range(n)
    ]
    keys = [decoded[i % len(decoded)].asset_id for i in range(n)]
    prod = producer(KafkaSettings(bootstrap_servers=bootstrap), **{"linger.ms": 1})
    headers = h.AVRO
    conn.send("ready")
    late = 0.0
    i = 0
    cpu0, wall0 = time.process_time(), time.time()
    while i < n:
        # Every millisecond, send whatever is due: constant rate without a wake-up per event.
        now = time.time()
        while i < n and planned[i] <= now:
            late = max(late, now - planned[i])
            prod.produce(topic, key=keys[i], value=values[i], headers=headers)
            i += 1
        prod.poll(0)
        if i < n:
            time.sleep(max(0.0, min(0.001, planned[i] - time.time())))
    prod.flush(30)
    cpu_share = (time.process_time() - cpu0) / max(1e-9, time.time() - wall0)
    ids = (f"{run_id}-{i}" for i in range(n))
    conn.send(
        {
            "sent": n,
            "max_late_s": late,
            "cpu_share": cpu_share,
            "planned": dict(zip(ids, planned, strict=True)),
        }
    )


def _reader(bootstrap: str, topic: str, expect: int, timeout_s: float, conn: Connection) -> None:
    import uuid

    from confluent_kafka import Consumer

    from driftline.services.runtime.settings import KafkaSettings

    consumer = Consumer(
        KafkaSettings(bootstrap_servers=bootstrap).client_config(
            **{
                "group.id": f"bench-latency-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 2,
                "isolation.level": "read_committed",
            }
        )
    )
    consumer.subscribe([topic])
    arrived: dict[str, float] = {}
    assigned_at = time.time()
    while not consumer.assignment() and time.time() - assigned_at < 30:
        consumer.poll(0.1)
    conn.send("ready")
    deadline = time.time() + timeout_s
    scored: dict[str, float] = {}
    appended: dict[str, float] = {}
    while len(arrived) < expect and time.time() < deadline:
        # The first result as soon as it comes, then what is already fetched: consume(n, t)
        # alone would wait for n results or t, and time every arrival that much late.
        first = consumer.poll(0.05)
        if first is None:
            continue
        now = time.time()
        for m in [first, *consumer.consume(1000, timeout=0)]:
            if m.error() is None and m.value():
                result = codec.decode(InferenceResult, m.value() or b"")
                arrived.setdefault(result.event_id, now)
                scored.setdefault(result.event_id, result.scored_time_ms / 1000.0)
                appended.setdefault(result.event_id, m.timestamp()[1] / 1000.0)
    consumer.close()
    conn.send((arrived, scored, appended))


def latency_run(
    bootstrap: str,
    source_topic: str,
    results_topic: str,
    base: list[bytes],
    modality: str,
    rate: float,
    seconds: float,
    run_id: str,
    stages: Breakdown | None = None,
) -> dict[str, Any]:
    """Send at `rate` for `seconds` from a separate process and time each result's arrival;
    `stages`, given the warm events, their planned send times, arrivals and results' broker
    timestamps, says where the time went."""
    n = int(rate * seconds)
    r_parent, r_child = CTX.Pipe()
    reader = CTX.Process(
        target=_reader, args=(bootstrap, results_topic, n, seconds + 60, r_child), daemon=True
    )
    reader.start()
    assert r_parent.recv() == "ready"
    s_parent, s_child = CTX.Pipe()
    start_at = time.time() + 3.0 + n / 200_000  # time to pre-encode
    sender = CTX.Process(
        target=_sender,
        args=(bootstrap, source_topic, base, modality, rate, seconds, start_at, run_id, s_child),
        daemon=True,
    )
    sender.start()
    assert s_parent.recv() == "ready"
    sent = s_parent.recv()
    arrived, scored, appended = r_parent.recv()
    sender.join(10)
    reader.join(10)
    planned: dict[str, float] = sent["planned"]
    # In send order, so dropping the first 10% drops the warm-up, not the fastest events.
    in_order = sorted((planned[k], arrived[k] - planned[k]) for k in arrived if k in planned)
    kept = in_order[len(in_order) // 10 :]
    ordered = sorted(lat for _, lat in kept) or [float("nan")]
    warm = {k for k in arrived if k in planned and planned[k] >= (kept[0][0] if kept else 0)}
    # Where the time goes: sent to scored (to the broker, fetch, batch, decode, score) and
    # scored to read (produce, ack, the reader's fetch); the clocks are one machine's.
    to_scored = sorted(scored[k] - planned[k] for k in warm) or [float("nan")]
    to_read = sorted(arrived[k] - scored[k] for k in warm) or [float("nan")]

    out: dict[str, Any] = {
        "rate_per_s": rate,
        "sent": sent["sent"],
        "received": len(arrived),
        "sender_max_late_ms": 1000 * sent["max_late_s"],
        "sender_cpu_share": sent["cpu_share"],
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[max(0, int(len(ordered) * 0.99) - 1)],
        "sent_to_scored_p50_ms": 1000 * to_scored[len(to_scored) // 2],
        "sent_to_scored_p99_ms": 1000 * to_scored[max(0, int(len(to_scored) * 0.99) - 1)],
        "scored_to_read_p50_ms": 1000 * to_read[len(to_read) // 2],
        "scored_to_read_p99_ms": 1000 * to_read[max(0, int(len(to_read) * 0.99) - 1)],
        "latencies_ms": [round(1000 * x, 3) for x in ordered],
    }
    if stages is not None:
        out["stages"] = stages(sorted(warm), planned, arrived, appended)
    return out
