// Send JSON sensor windows to driftline's sensor.windows topic with kafkajs (pure JavaScript).
//
//   cd examples/producers/node && npm ci
//   node produce.js --bootstrap-servers 127.0.0.1:9092 --count 10
//
// JSON records carry the header content-type: application/json and the fields of
// schemas/avro/SensorWindow.avsc; docs/schemas/SensorWindow.schema.json is their JSON Schema.
"use strict";

const { parseArgs } = require("node:util");
const { randomUUID } = require("node:crypto");
const { Kafka, logLevel } = require("kafkajs");

// The sensor model's input contract (schemas/contracts.py): 4 channels x 64 samples.
const CHANNELS = ["leakage_current_ma", "partial_discharge_pc", "temperature_c", "relative_humidity_pct"];
const BASE = [0.5, 20.0, 25.0, 60.0]; // mA, pC, deg C, % relative humidity
const N_SAMPLES = 64;

const USAGE = `usage: node produce.js [--bootstrap-servers HOST:PORT] [--topic TOPIC] [--count N] [--assets N]
  --bootstrap-servers  Kafka brokers, comma-separated (default 127.0.0.1:9092)
  --topic              the sensor windows topic, with your deployment's prefix (default sensor.windows)
  --count              how many windows to send (default 10)
  --assets             spread them over this many assets (default 5)`;

function window(assetId) {
  return {
    event_id: randomUUID(), // unique per event: results and labels refer to it
    asset_id: assetId,
    sensor_id: `${assetId}-s1`,
    event_time_ms: Date.now(), // when the window ended, epoch ms UTC (an integer)
    sample_rate_hz: 1.0,
    channels: CHANNELS,
    n_samples: N_SAMPLES,
    // One list of numbers per channel, in the order of `channels`.
    samples: BASE.map((b) => Array.from({ length: N_SAMPLES }, () => b * (0.9 + 0.2 * Math.random()))),
  };
}

function positive(name, text) {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) {
    console.error(`produce.js: --${name} must be a whole number >= 1, not ${JSON.stringify(text)}\n${USAGE}`);
    process.exit(2);
  }
  return n;
}

async function main() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        "bootstrap-servers": { type: "string", default: "127.0.0.1:9092" },
        topic: { type: "string", default: "sensor.windows" },
        count: { type: "string", default: "10" },
        assets: { type: "string", default: "5" },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (err) {
    console.error(`produce.js: ${err.message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const count = positive("count", values.count);
  const assets = positive("assets", values.assets);

  const kafka = new Kafka({
    clientId: "driftline-node-example",
    brokers: values["bootstrap-servers"].split(","),
    logLevel: logLevel.NOTHING, // failures surface once, as the error of connect or send
  });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  try {
    const messages = [];
    for (let i = 0; i < count; i++) {
      const assetId = `insulator-${String(i % assets).padStart(3, "0")}`;
      messages.push({
        key: assetId, // the key is the asset id: one asset's windows stay in order
        value: JSON.stringify(window(assetId)),
        headers: { "content-type": "application/json" },
      });
    }
    for (let i = 0; i < messages.length; i += 500) {
      await producer.send({ topic: values.topic, acks: -1, messages: messages.slice(i, i + 500) });
    }
  } finally {
    await producer.disconnect();
  }
  console.log(`sent ${count} json sensor windows to ${values.topic}`);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`produce.js: ${err.message}`);
    process.exit(1);
  },
);
