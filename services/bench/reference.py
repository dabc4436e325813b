"""The reference rows of `driftline bench inference`: the loop a competent engineer writes by
hand in an afternoon, on the same events, the same model and the same partitions.

About sixty lines, plainly written, the way the confluent-kafka and fastavro docs teach it:
`consume(500)`, fastavro reads each record, numpy stacks the batch, one ONNX Runtime call per
batch, fastavro writes each result, `produce` each, `poll(0)`, and an asynchronous commit of
the consumer's positions. The strict variant flushes the producer before each commit, so no
commit runs ahead of its results (what at-least-once needs); the plain one can lose results
whose commit went through before their delivery failed.
"""

from __future__ import annotations

import io
import time
import uuid
from typing import Any

import fastavro
import numpy as np
from confluent_kafka import Consumer, Producer

from driftline.schemas.avro import parsed_schema
from driftline.services.bench.workload import Workload
from driftline.services.inference.model import LoadedModel
from driftline.services.runtime.settings import KafkaSettings


def _inputs(records: list[dict[str, Any]], modality: str, size: tuple[int, int]) -> Any:
    if modality == "sensor":
        return np.stack(
            [
                np.frombuffer(r["samples"], dtype="<f4").reshape(len(r["channels"]), -1)
                for r in records
            ]
        )
    from PIL import Image

    pixels = []
    for r in records:
        with Image.open(io.BytesIO(r["image"])) as img:
            rgb = img.convert("RGB").resize((size[1], size[0]))
            pixels.append(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(pixels).astype(np.float32)


def hand_written_loop(
    kafka: KafkaSettings,
    w: Workload,
    model: LoadedModel,
    n: int,
    *,
    strict: bool,
) -> dict[str, float]:
    """Run the hand-written loop over the preloaded events until n are scored."""
    source = kafka.topics.name(w.source_base)
    results = kafka.topics.inference_results
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"bench-hand-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([source])
    producer = Producer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
        }
    )
    reader = parsed_schema("SensorWindow" if w.modality == "sensor" else "CameraImage")
    writer = parsed_schema("InferenceResult")
    shape = model.version.inputs[0].shape if model.version.inputs else [-1, 3, 64, 64]
    size = (int(shape[-2]), int(shape[-1]))
    mv = model.version
    done, first, cpu0 = 0, 0.0, 0.0
    while done < n:
        msgs = consumer.consume(500, timeout=0.1)
        if not msgs:
            continue
        if not first:
            first, cpu0 = time.perf_counter(), time.process_time()
        records: list[dict[str, Any]] = [
            fastavro.schemaless_reader(io.BytesIO(m.value() or b""), reader)  # type: ignore[misc]
            for m in msgs
        ]
        probs = model.predict(_inputs(records, w.modality, size))
        best = probs.argmax(axis=1)
        now_ms = int(time.time() * 1000)
        for r, p, b in zip(records, probs, best, strict=True):
            out = io.BytesIO()
            fastavro.schemaless_writer(
                out,
                writer,
                {
                    "schema_version": 1,
                    "event_id": r["event_id"],
                    "asset_id": r["asset_id"],
                    "modality": w.modality,
                    "model_name": mv.name,
                    "model_version": mv.version,
                    "classes": mv.classes,
                    "probabilities": p.astype("<f4").tobytes(),
                    "predicted_class": mv.classes[int(b)],
                    "confidence": float(p[b]),
                    "event_time_ms": r["event_time_ms"],
                    "scored_time_ms": now_ms,
                },
            )
            producer.produce(results, key=r["asset_id"], value=out.getvalue())
        producer.poll(0)
        if strict:
            producer.flush()
        consumer.commit(asynchronous=True)
        done += len(msgs)
    producer.flush()
    seconds = time.perf_counter() - first
    cpu = time.process_time() - cpu0
    consumer.close()
    return {"events_per_s": done / seconds, "cpu_us_per_event": 1e6 * cpu / done}
