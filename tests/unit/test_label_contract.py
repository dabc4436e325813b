"""The Label contract: per-event labels and asset inspections; version-1 records stay readable."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import fastavro
import pytest

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.messages import LABEL_SCHEMA_VERSION, Label
from driftline.schemas.writers import WRITER_SCHEMAS

REPO = Path(__file__).resolve().parents[2]


def _v1_bytes(record: dict[str, object]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(WRITER_SCHEMAS[("Label", 1)]), record)
    return buf.getvalue()


def test_a_label_written_with_schema_version_1_still_decodes() -> None:
    old = {
        "schema_version": 1,
        "event_id": "e-1",
        "true_class": "cracked",
        "source": "inspection",
        "label_time_ms": 9,
        "asset_id": None,
    }
    label = codec.decode(Label, _v1_bytes(old))
    assert (label.event_id, label.true_class, label.label_time_ms) == ("e-1", "cracked", 9)
    assert not label.is_inspection
    assert label.lookback_ms is None


def test_the_recorded_version_1_writer_is_the_committed_first_schema() -> None:
    try:
        first = subprocess.run(
            ["git", "-C", str(REPO), "log", "--format=%H", "--", "schemas/avro/Label.avsc"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
        text = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{first}:schemas/avro/Label.avsc"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError, IndexError):
        pytest.skip("no git history")
    committed = [{k: v for k, v in f.items() if k != "doc"} for f in json.loads(text)["fields"]]
    assert committed == WRITER_SCHEMAS[("Label", 1)]["fields"]


@pytest.mark.parametrize("content_type", [h.CONTENT_TYPE_AVRO, h.CONTENT_TYPE_JSON])
def test_an_asset_inspection_round_trips_and_names_its_interval(content_type: str) -> None:
    label = Label(
        true_class="cracked",
        source="inspection",
        label_time_ms=50_000,
        asset_id="ins-7",
        inspection_time_ms=40_000,
        lookback_ms=10_000,
    )
    back = codec.decode(Label, codec.encode(label, content_type=content_type), content_type)
    assert back == label
    assert back.schema_version == LABEL_SCHEMA_VERSION
    assert back.is_inspection
    assert back.interval() == (30_000, 40_000)
    # Without an inspection time, the label time is the inspection's.
    later = Label(true_class="x", source="s", label_time_ms=5, asset_id="a", lookback_ms=5)
    assert later.interval() == (0, 5)
