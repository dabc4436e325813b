"""Send sensor windows to driftline's sensor.windows topic, as Avro or as JSON.

Needs only confluent-kafka and fastavro (pip install confluent-kafka fastavro), and the Avro
contract schemas/avro/SensorWindow.avsc from the driftline repository; no driftline import.

    python examples/producers/python/produce.py --bootstrap-servers 127.0.0.1:9092 --count 10
    python examples/producers/python/produce.py --format json --count 10
"""

from __future__ import annotations

import argparse
import io
import json
import random
import struct
import sys
import time
import uuid
from pathlib import Path

import fastavro
from confluent_kafka import KafkaException, Producer

AVSC = Path(__file__).resolve().parents[3] / "schemas" / "avro" / "SensorWindow.avsc"
# The sensor model's input contract (schemas/contracts.py): 4 channels x 64 samples.
CHANNELS = ["leakage_current_ma", "partial_discharge_pc", "temperature_c", "relative_humidity_pct"]
N_SAMPLES = 64


def window(asset_id: str) -> dict[str, object]:
    """One window of made-up readings; `samples` is one list of floats per channel."""
    base = [0.5, 20.0, 25.0, 60.0]  # mA, pC, deg C, % relative humidity
    return {
        "event_id": str(uuid.uuid4()),  # unique per event: results and labels refer to it
        "asset_id": asset_id,
        "sensor_id": f"{asset_id}-s1",
        "event_time_ms": int(time.time() * 1000),  # when the window ended, epoch ms UTC
        "sample_rate_hz": 1.0,
        "channels": CHANNELS,
        "n_samples": N_SAMPLES,
        "samples": [[b * random.uniform(0.9, 1.1) for _ in range(N_SAMPLES)] for b in base],
    }


def as_avro(record: dict[str, object], schema: object) -> bytes:
    """Avro binary; samples travel as little-endian float32 bytes, row after row."""
    rows = record["samples"]
    assert isinstance(rows, list)
    flat = [x for row in rows for x in row]
    avro_record = {**record, "schema_version": 1, "samples": struct.pack(f"<{len(flat)}f", *flat)}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, avro_record)
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="sensor.windows", help="with your deployment's prefix")
    parser.add_argument("--count", type=int, default=10, help="how many windows to send")
    parser.add_argument("--assets", type=int, default=5, help="spread them over this many assets")
    parser.add_argument("--format", choices=["avro", "json"], default="avro")
    args = parser.parse_args()
    if args.count < 1 or args.assets < 1:
        parser.error("--count and --assets must be at least 1")

    schema = fastavro.parse_schema(json.loads(AVSC.read_text()))
    content_type = "application/avro" if args.format == "avro" else "application/json"
    producer = Producer({"bootstrap.servers": args.bootstrap_servers, "enable.idempotence": True})
    failed: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    for i in range(args.count):
        asset_id = f"insulator-{i % args.assets:03d}"
        record = window(asset_id)
        value = as_avro(record, schema) if args.format == "avro" else json.dumps(record).encode()
        producer.produce(
            args.topic,
            key=asset_id.encode(),  # the key is the asset id: one asset's windows stay in order
            value=value,
            headers=[("content-type", content_type.encode())],
            on_delivery=delivered,
        )
        producer.poll(0)
    left = producer.flush(30)
    if left or failed:
        print(f"produce: {left} undelivered, {len(failed)} failed: {failed[:3]}", file=sys.stderr)
        return 1
    print(f"sent {args.count} {args.format} sensor windows to {args.topic}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KafkaException as exc:
        print(f"produce: {exc}", file=sys.stderr)
        sys.exit(1)
