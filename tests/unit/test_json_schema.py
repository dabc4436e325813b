"""The JSON Schemas for JSON producers: committed as generated, and agreeing with the consumers.

A JSON record the consumers accept passes its schema; one they dead-letter fails it, for the
cases below. The consumers' own checks are the oracle: the inference consumer's sensor batch
decoder, the codec for photos, and the codec plus the join's label check for labels.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from driftline.schemas import codec, json_schema
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.avro import schema_json
from driftline.schemas.contracts import SENSOR_CHANNELS, SENSOR_SAMPLES
from driftline.schemas.messages import CameraImage, Label
from driftline.schemas.sensor_batch import decode_sensor_batch
from driftline.services import cli
from driftline.services.core.join import label_problem

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
JSON = h.CONTENT_TYPE_JSON


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json_schema.json_schema(name))


def _window(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": "e-1",
        "asset_id": "insulator-001",
        "sensor_id": "s-1",
        "event_time_ms": 1_700_000_000_000,
        "sample_rate_hz": 1,
        "channels": list(SENSOR_CHANNELS),
        "n_samples": SENSOR_SAMPLES,
        "samples": [[0.5] * SENSOR_SAMPLES for _ in SENSOR_CHANNELS],
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not ...}


def _photo(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": "p-1",
        "asset_id": "insulator-001",
        "camera_id": "c-1",
        "event_time_ms": 1_700_000_000_000,
        "content_type": "image/png",
        "image": base64.b64encode(b"\x89PNG\r\n\x1a\n...").decode(),
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not ...}


def _label(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": "e-1",
        "asset_id": "insulator-001",
        "true_class": "cracked",
        "source": "inspection",
        "label_time_ms": 1_700_000_000_000,
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not ...}


def _window_accepted(record: object) -> bool:
    batch = decode_sensor_batch(
        [json.dumps(record).encode()],
        [JSON],
        channels=len(SENSOR_CHANNELS),
        n_samples=SENSOR_SAMPLES,
    )
    return not batch.failures


def _photo_accepted(record: object) -> bool:
    try:
        msg = codec.decode(CameraImage, json.dumps(record).encode(), JSON)
    except dl.CodecError:
        return False
    return msg.image is not None or bool(msg.image_uri)  # what the image decoder requires


def _label_accepted(record: object) -> bool:
    try:
        return label_problem(codec.decode(Label, json.dumps(record).encode(), JSON)) is None
    except dl.CodecError:
        return False


WINDOWS = {
    "complete": (_window(), True),
    "without n_samples or schema_version": (_window(n_samples=..., schema_version=...), True),
    "with a field the contract does not name": (_window(site="north"), True),
    "without event_id": (_window(event_id=...), False),
    "with an empty event_id": (_window(event_id=""), False),
    "with a text event time": (_window(event_time_ms="2024-01-01T00:00:00Z"), False),
    "with a fractional event time": (_window(event_time_ms=1.5), False),
    "with 1-D samples": (_window(samples=[0.5] * SENSOR_SAMPLES), False),
    "with text samples": (_window(samples=[["x"] * SENSOR_SAMPLES] * 4), False),
    "with base64 samples": (_window(samples=base64.b64encode(b"\0" * 1024).decode()), False),
    "with a sample past float32": (_window(samples=[[1e39] * SENSOR_SAMPLES] * 4), False),
    "with channels as text": (_window(channels="leakage_current_ma"), False),
    "that is a list": ([_window()], False),
}
PHOTOS = {
    "inline": (_photo(), True),
    "by reference": (_photo(image=..., image_uri="s3://photos/p-1.png"), True),
    "with neither image nor reference": (_photo(image=...), False),
    "with a null image and no reference": (_photo(image=None), False),
    "with image bytes not in base64": (_photo(image="not base64!"), False),
    "without camera_id": (_photo(camera_id=...), False),
}
LABELS = {
    "per event": (_label(), True),
    "an inspection": (_label(event_id=..., lookback_ms=86_400_000), True),
    "an inspection with a null event_id": (_label(event_id=None, lookback_ms=0), True),
    "per event without asset_id": (_label(asset_id=...), False),
    "an inspection without lookback_ms": (_label(event_id=...), False),
    "an inspection looking forward": (_label(event_id=..., lookback_ms=-1), False),
    "without true_class": (_label(true_class=...), False),
    "with a numeric event_id": (_label(event_id=7), False),
}
CASES = (
    [
        pytest.param("SensorWindow", record, ok, _window_accepted, id=f"window {name}")
        for name, (record, ok) in WINDOWS.items()
    ]
    + [
        pytest.param("CameraImage", record, ok, _photo_accepted, id=f"photo {name}")
        for name, (record, ok) in PHOTOS.items()
    ]
    + [
        pytest.param("Label", record, ok, _label_accepted, id=f"label {name}")
        for name, (record, ok) in LABELS.items()
    ]
)


@pytest.mark.parametrize(("name", "record", "accepted", "consumer_accepts"), CASES)
def test_the_schema_accepts_what_the_consumers_accept_and_refuses_what_they_refuse(
    name: str, record: object, accepted: bool, consumer_accepts: Any
) -> None:
    assert consumer_accepts(record) is accepted, "the consumer's verdict changed"
    errors = [e.message for e in _validator(name).iter_errors(record)]
    assert (not errors) is accepted, errors or "the schema accepted a record the consumer refuses"


@pytest.mark.parametrize("name", list(json_schema.PRODUCER_RECORDS))
def test_committed_schemas_are_what_the_generator_writes(name: str) -> None:
    committed = DOCS / json_schema.file_name(name)
    assert committed.read_text(encoding="utf-8") == json_schema.render(name), (
        f"{committed} is stale: run `driftline schemas json --out docs/schemas`"
    )


@pytest.mark.parametrize("name", list(json_schema.PRODUCER_RECORDS))
def test_each_schema_is_valid_2020_12_and_names_every_avro_field(name: str) -> None:
    schema = json_schema.json_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert list(schema["properties"]) == [f["name"] for f in schema_json(name)["fields"]]


def test_only_producer_records_have_a_json_schema() -> None:
    with pytest.raises(ValueError, match="not a producer record"):
        json_schema.json_schema("ModelVersion")


def test_the_command_prints_and_writes_the_schemas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["schemas", "json", "--record", "Label"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema.json_schema("Label")

    assert cli.main(["schemas", "json", "--out", str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(json_schema.file_name(n) for n in json_schema.PRODUCER_RECORDS)

    (tmp_path / "file").write_text("")
    assert cli.main(["schemas", "json", "--out", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err.strip().endswith("is a file, not a folder")
