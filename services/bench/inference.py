"""`driftline bench inference`: how fast driftline scores a Kafka stream, against its limits.

One run, the same events and the same model for every row:
  B0     raw ONNX Runtime on pre-decoded batches (best batch size): the compute limit
  B1     Kafka passthrough (consume, produce the same bytes, commit): the transport limit
  L      1 / (1/B0 + 1/B1): the combined limit when both share the cores
  ALO    the pipeline, at-least-once;  EOS  the pipeline, exactly-once
  naive  poll one JSON message, score it alone, produce, commit, repeat
then p50/p99 end-to-end latency at constant rates of 50% and 80% of the pipeline's maximum,
a hot swap under load (time until the new version scores, events lost and duplicated), and
resident memory over repeated swaps.

This module runs the throughput rows and reports; the events and model are built by
services.bench.workload, the live parts (latency, swap, memory) run in services.bench.underload.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.messages import MODALITY_SENSOR, CameraImage, SensorWindow
from driftline.services.bench import reference, underload
from driftline.services.bench import workload as wl
from driftline.services.bench.harness import JSON, bench_kafka, preload, write_report
from driftline.services.bench.plots import plot_report
from driftline.services.bench.stages import describe
from driftline.services.core.scoring import commit_offsets, top1
from driftline.services.inference.consumer import InferenceConsumer
from driftline.services.inference.handler import BatchStats
from driftline.services.inference.metrics import InferenceMetrics
from driftline.services.inference.model import LoadedModel, load
from driftline.services.inference.service import decoder_for
from driftline.services.inference.settings import InferenceSettings
from driftline.services.inference.watcher import ModelSlot
from driftline.services.runtime.artifacts import FsspecArtifactStore
from driftline.services.runtime.kafka import (
    DeliveryTracker,
    consumer_config,
    flush_or_raise,
    position,
    producer,
)
from driftline.services.runtime.settings import KafkaSettings


def _b0(model: LoadedModel, inputs: npt.NDArray[np.float32]) -> tuple[float, int, dict[int, float]]:
    rates: dict[int, float] = {}
    for size in (1, 16, 64, 256, 1024):
        batches = [inputs[i : i + size] for i in range(0, min(len(inputs), 20 * size + 2000), size)]
        model.predict(batches[0])
        t0 = time.perf_counter()
        done = 0
        for b in batches:
            model.predict(b)
            done += len(b)
        rates[size] = done / (time.perf_counter() - t0)
    best = max(rates, key=lambda k: rates[k])
    return rates[best], best, rates


def _run_consumer_until(
    settings: InferenceSettings, source_base: str, n: int, slot: ModelSlot
) -> dict[str, float]:
    """Run the real consumer until n events are committed: events per second, the process's
    CPU per event (every thread: Python, ONNX Runtime, librdkafka) and the mean batch."""
    _, decoder = decoder_for(settings)
    consumer = InferenceConsumer(
        settings, source_base, decoder, slot, InferenceMetrics(CollectorRegistry())
    )
    done = batches = 0
    first: list[float] = []

    def on_batch(stats: BatchStats) -> None:
        nonlocal done, batches
        if not first:
            first.extend((time.perf_counter(), time.process_time()))
        done += stats.consumed
        batches += 1

    started, cpu0 = time.perf_counter(), time.process_time()
    consumer.run(lambda: done >= n, on_batch)
    wall = time.perf_counter() - (first[0] if first else started)
    cpu = time.process_time() - (first[1] if first else cpu0)
    return {
        "events_per_s": n / wall,
        "cpu_us_per_event": 1e6 * cpu / max(1, done),
        "mean_batch": done / max(1, batches),
    }


def _ort_cpu_us(model: LoadedModel, inputs: npt.NDArray[np.float32], batch: int) -> float:
    """ONNX Runtime's own CPU per event at this batch size (the model alone, inputs ready)."""
    batch = max(1, batch)
    chunks = [inputs[i : i + batch] for i in range(0, len(inputs), batch)][:200]
    model.predict(chunks[0])
    cpu0 = time.process_time()
    for c in chunks:
        model.predict(c)
    return 1e6 * (time.process_time() - cpu0) / sum(len(c) for c in chunks)


def _b1(kafka: KafkaSettings, w: wl.Workload, n: int, batch: int) -> float:
    """Consume, produce the same bytes, flush, commit: the transport alone."""
    consumer = Consumer(consumer_config(kafka, f"bench-b1-{uuid.uuid4().hex[:6]}"))
    consumer.subscribe([kafka.topics.name(w.source_base)])
    prod = producer(kafka)
    tracker = DeliveryTracker()
    out = kafka.topics.name("bench.passthrough")
    from driftline.schemas.topics import TopicSpec
    from driftline.services.runtime.kafka import create_topics

    create_topics(kafka, [TopicSpec("bench.passthrough", "asset_id", "bytes", partitions=3)])
    done, first = 0, 0.0
    while done < n:
        msgs = consumer.consume(batch, timeout=0.05)
        if not msgs:
            continue
        first = first or time.perf_counter()
        tracker.reset()
        for m in msgs:
            prod.produce(
                out, key=m.key(), value=m.value(), headers=m.headers(), on_delivery=tracker
            )
        flush_or_raise(prod, tracker)
        offsets = commit_offsets(position(m) for m in msgs)
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
        )
        done += len(msgs)
    rate = done / (time.perf_counter() - first)
    consumer.close()
    return rate


def _naive(kafka: KafkaSettings, w: wl.Workload, model: LoadedModel, n: int) -> float:
    """The common first attempt: one message at a time, JSON, batch of 1, commit each."""
    topic = kafka.topics.name(w.source_base + ".json")
    from driftline.schemas.topics import TopicSpec
    from driftline.services.runtime.kafka import create_topics

    create_topics(kafka, [TopicSpec(w.source_base + ".json", "asset_id", "json", partitions=3)])
    preload(kafka, topic, list(zip(w.keys[:n], w.json[:n], strict=True)), JSON)
    consumer = Consumer(consumer_config(kafka, f"bench-naive-{uuid.uuid4().hex[:6]}"))
    consumer.subscribe([topic])
    prod = producer(kafka)
    results = kafka.topics.inference_results
    kind = SensorWindow if w.modality == MODALITY_SENSOR else CameraImage
    done, first = 0, 0.0
    while done < n:
        m = consumer.poll(0.1)
        if m is None or m.error() is not None:
            continue
        first = first or time.perf_counter()
        msg = msgspec.json.decode(m.value() or b"")
        if kind is SensorWindow:
            x = np.asarray(msg["samples"], dtype=np.float32)[None]
        else:
            from driftline.services.inference.images import decode_image

            img = codec.decode(CameraImage, m.value(), "application/json")
            pixels = decode_image(img.image or b"", img.content_type, max_pixels=1 << 24)
            x = pixels.transpose(2, 0, 1)[None].astype(np.float32) * np.float32(1 / 255)
        probs = model.predict(x)
        idx, conf = top1(probs)
        prod.produce(
            results,
            key=m.key(),
            value=msgspec.json.encode(
                {
                    "event_id": msg["event_id"],
                    "predicted_class": w.classes[int(idx[0])],
                    "confidence": float(conf[0]),
                }
            ),
        )
        prod.flush()
        consumer.commit(message=m, asynchronous=False)
        done += 1
    rate = done / (time.perf_counter() - first)
    consumer.close()
    return rate


def run(
    modality: str,
    events: int,
    naive_events: int,
    partitions: int,
    bootstrap: str | None,
    out: Path | None,
    say: wl.Say,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    w = wl.build(modality, events, 7, say)
    kafka = bench_kafka(bootstrap, partitions)
    boot = kafka.bootstrap_servers
    root = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    mv = wl.publish(kafka, w, root, 1)
    say(f"preloading {events} {modality} events on {kafka.topics.name(w.source_base)}")
    preload(kafka, kafka.topics.name(w.source_base), list(zip(w.keys, w.avro, strict=True)), h.AVRO)
    model = load(mv, FsspecArtifactStore(root.as_uri()))
    slot = ModelSlot()
    slot.swap(model)
    report: dict[str, Any] = {
        "modality": modality,
        "events": events,
        "partitions": partitions,
        "bytes_per_event": statistics.mean(len(v) for v in w.avro[:1000]),
    }
    say("B0: raw ONNX Runtime")
    b0, b0_batch, b0_rates = _b0(model, w.inputs)
    report["B0"] = {"events_per_s": b0, "best_batch": b0_batch, "by_batch": b0_rates}
    settings = InferenceSettings(kafka=kafka, modality=modality, statistics_interval_ms=0)
    say("B1: Kafka passthrough")
    b1 = _b1(kafka, w, events, settings.batch_size)
    report["B1"] = {"events_per_s": b1}
    limit = 1 / (1 / b0 + 1 / b1)
    report["L"] = {"events_per_s": limit}
    say("hand-written loop (reference)")
    hand = reference.hand_written_loop(kafka, w, model, events, strict=False)
    say("hand-written loop, flushing before each commit (strict reference)")
    strict = reference.hand_written_loop(kafka, w, model, events, strict=True)
    report["reference"] = {"plain": hand, "strict": strict}
    say("pipeline, at-least-once")
    alo_run = _run_consumer_until(
        settings.model_copy(update={"group_id": f"alo-{uuid.uuid4().hex[:6]}"}),
        w.source_base,
        events,
        slot,
    )
    say("pipeline, exactly-once")
    eos_run = _run_consumer_until(
        settings.model_copy(
            update={
                "group_id": f"eos-{uuid.uuid4().hex[:6]}",
                "exactly_once": True,
                "instance_id": "bench",
            }
        ),
        w.source_base,
        events,
        slot,
    )
    say(f"naive consumer ({naive_events} events)")
    naive = _naive(kafka, w, model, naive_events)
    alo, eos = alo_run["events_per_s"], eos_run["events_per_s"]
    ref = hand["events_per_s"]
    overhead = {}
    for mode, run_ in (("at_least_once", alo_run), ("exactly_once", eos_run)):
        ort_us = _ort_cpu_us(model, w.inputs, round(run_["mean_batch"]))
        overhead[mode] = {
            "cpu_us_per_event": run_["cpu_us_per_event"],
            "onnxruntime_cpu_us_per_event": ort_us,
            "overhead_us_per_event": run_["cpu_us_per_event"] - ort_us,
            "mean_batch": run_["mean_batch"],
        }
    report["overhead"] = overhead
    report["pipeline"] = {
        "at_least_once_per_s": alo,
        "exactly_once_per_s": eos,
        "naive_per_s": naive,
        "alo_over_L": alo / limit,
        "eos_over_alo": eos / alo,
        "alo_over_naive": alo / naive,
        "alo_over_reference": alo / ref,
        "eos_over_reference": eos / ref,
        "alo_over_strict_reference": alo / strict["events_per_s"],
    }
    report["latency"] = []
    for share in (0.1, 0.5, 0.8):
        say(f"latency at {share:.0%} of the pipeline's maximum ({alo * share:,.0f}/s)")
        report["latency"].append(
            {"load": share, **underload.latency(boot, partitions, w, root, alo * share, 10.0)}
        )
    say("hot swap under load")
    report["swap"] = underload.swap_under_load(boot, partitions, w, root, alo * 0.5)
    say("resident memory over 50 swaps")
    report["swap_memory"] = underload.swap_memory(w, root, 50)
    report["seconds"] = time.perf_counter() - t_start
    path = write_report(report, out, f"inference-{modality}")
    report["json"] = str(path)
    report["png"] = plot_report(report, path.with_suffix(".png"))
    return report


def latency_only(
    modality: str,
    events: int,
    partitions: int,
    bootstrap: str | None,
    rates: list[float],
    seconds: float,
    out: Path | None,
    say: wl.Say,
) -> dict[str, Any]:
    """Only the latency part, at the given rates (events/s), each on topics of its own."""
    w = wl.build(modality, events, 7, say)
    kafka = bench_kafka(bootstrap, partitions)
    root = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    report: dict[str, Any] = {"modality": modality, "partitions": partitions, "latency": []}
    for rate in rates:
        say(f"latency at {rate:,.0f}/s for {seconds:.0f} s")
        lat = underload.latency(kafka.bootstrap_servers, partitions, w, root, rate, seconds)
        report["latency"].append({"load": None, **lat})
    path = write_report(report, out, f"latency-{modality}")
    report["json"] = str(path)
    return report


def print_table(r: dict[str, Any], write: Callable[[str], Any] = sys.stdout.write) -> None:
    p = r["pipeline"]
    rows = [
        (f"B0 raw ONNX Runtime (batch {r['B0']['best_batch']})", r["B0"]["events_per_s"]),
        ("B1 Kafka passthrough", r["B1"]["events_per_s"]),
        ("L = 1/(1/B0 + 1/B1)", r["L"]["events_per_s"]),
        ("hand-written loop (reference)", r["reference"]["plain"]["events_per_s"]),
        ("hand-written loop, strict", r["reference"]["strict"]["events_per_s"]),
        ("pipeline at-least-once", p["at_least_once_per_s"]),
        ("pipeline exactly-once", p["exactly_once_per_s"]),
        ("naive consumer", p["naive_per_s"]),
    ]
    write(
        f"\n{r['modality']} events, {r['events']} preloaded, {r['partitions']} partitions, "
        f"{r['bytes_per_event']:.0f} B/event\n"
    )
    for label, v in rows:
        write(f"  {label:34} {v:12,.0f} events/s\n")
    write(f"  {'ALO / L':34} {p['alo_over_L']:12.2f}   (goal >= 0.9)\n")
    write(f"  {'ALO / reference':34} {p['alo_over_reference']:12.2f}   (goal >= 1.3)\n")
    write(f"  {'EOS / reference':34} {p['eos_over_reference']:12.2f}   (goal >= 1.2)\n")
    write(f"  {'ALO / strict reference':34} {p['alo_over_strict_reference']:12.2f}\n")
    write(f"  {'ALO / naive':34} {p['alo_over_naive']:12.1f}x\n")
    for mode, o in r["overhead"].items():
        write(
            f"  CPU per event, {mode.replace('_', '-')}: {o['cpu_us_per_event']:.1f} us, of "
            f"which ONNX Runtime {o['onnxruntime_cpu_us_per_event']:.1f} us at batch "
            f"{o['mean_batch']:.0f}: overhead {o['overhead_us_per_event']:.1f} us "
            "(goal <= 10)\n"
        )
    ref = r["reference"]["plain"]
    write(f"  CPU per event, hand-written loop: {ref['cpu_us_per_event']:.1f} us\n")
    print_latency(r, write)
    s = r["swap"]
    write(
        f"  hot swap at {s['rate_per_s']:,.0f}/s: new version scoring after "
        f"{s['new_version_scoring_after_s']:.2f} s, "
        f"lost {s['lost']}, duplicated {s['duplicated']}\n"
    )
    m = r["swap_memory"]
    write(
        f"  RSS over {m['swaps']} swaps: {m['rss_after_first_mib']:.0f} MiB after 1, "
        f"{m['rss_after_10_mib']:.0f} after 10, {m['rss_after_last_mib']:.0f} after {m['swaps']} "
        f"(growth after 10: {m['growth_after_10_mib']:+.1f} MiB)\n"
    )
    write(f"  took {r['seconds']:.0f} s; JSON: {r['json']}; PNG: {r['png'] or 'not written'}\n")


def print_latency(r: dict[str, Any], write: Callable[[str], Any] = sys.stdout.write) -> None:
    for lat in r["latency"]:
        load = f"{lat['load']:.0%} load" if lat.get("load") is not None else "a fixed rate"
        write(
            f"  latency at {load} ({lat['rate_per_s']:,.0f}/s): "
            f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms "
            f"({lat['received']}/{lat['sent']} received); sent->scored p50/p99 "
            f"{lat['sent_to_scored_p50_ms']:.1f}/{lat['sent_to_scored_p99_ms']:.1f} ms, "
            f"scored->read {lat['scored_to_read_p50_ms']:.1f}/"
            f"{lat['scored_to_read_p99_ms']:.1f} ms; load generator "
            f"{lat['sender_cpu_share']:.0%} of a core\n"
        )
        if "stages" in lat:
            write(f"    {describe(lat['stages'])}\n")
