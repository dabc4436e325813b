"""Every .avsc stays BACKWARD compatible with its previously committed version."""

from __future__ import annotations

import copy
import io
import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import fastavro
import pytest

from driftline.schemas.avro import AVRO_PACKAGE_DIR, schema_json, schema_names
from driftline.schemas.compat import backward_problems

REPO = Path(__file__).resolve().parents[2]
AVRO_DIR = f"schemas/{AVRO_PACKAGE_DIR}"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
    ).stdout


def _committed_versions(name: str) -> list[dict[str, Any]]:
    """Distinct committed versions of a schema, oldest first."""
    path = f"{AVRO_DIR}/{name}.avsc"
    commits = _git("log", "--format=%H", "--", path).split()
    versions: list[dict[str, Any]] = []
    for commit in reversed(commits):
        try:
            text = _git("show", f"{commit}:{path}")
        except subprocess.CalledProcessError:
            continue  # deleted in that commit
        schema = json.loads(text)
        if not versions or versions[-1] != schema:
            versions.append(schema)
    return versions


def _git_history_available() -> bool:
    if shutil.which("git") is None:
        return False
    try:
        _git("rev-parse", "HEAD")
    except subprocess.CalledProcessError:
        return False
    return True


@pytest.mark.parametrize("name", schema_names())
def test_schema_is_backward_compatible_with_every_earlier_version(name: str) -> None:
    if not _git_history_available():
        pytest.skip("no git history to compare with")
    versions = [*_committed_versions(name), schema_json(name)]
    for old, new in itertools.pairwise(versions):
        problems = backward_problems(new, old)
        assert not problems, f"{name}.avsc breaks BACKWARD compatibility: {problems}"


BASE = {
    "type": "record",
    "name": "R",
    "fields": [
        {"name": "a", "type": "int"},
        {"name": "b", "type": ["null", "string"], "default": None},
        {"name": "c", "type": {"type": "array", "items": "float"}},
    ],
}


def _changed(**change: Any) -> dict[str, Any]:
    schema = copy.deepcopy(BASE)
    fields = schema["fields"]
    if "drop" in change:
        fields[:] = [f for f in fields if f["name"] != change["drop"]]
    if "add" in change:
        fields.append(change["add"])
    if "retype" in change:
        name, new_type = change["retype"]
        next(f for f in fields if f["name"] == name)["type"] = new_type
    return schema


COMPATIBLE = {
    "add field with default": _changed(add={"name": "d", "type": "long", "default": 0}),
    "drop a field": _changed(drop="c"),
    "promote int to long": _changed(retype=("a", "long")),
    "promote array items float to double": _changed(
        retype=("c", {"type": "array", "items": "double"})
    ),
    "widen to union": _changed(retype=("a", ["null", "int"])),
}
BREAKING = {
    "add field without default": _changed(add={"name": "d", "type": "long"}),
    "narrow long to int": None,  # built below from a long base
    "change int to string": _changed(retype=("a", "string")),
    "drop null from union": _changed(retype=("b", "string")),
}


@pytest.mark.parametrize("label", sorted(COMPATIBLE))
def test_checker_accepts_compatible_changes_and_fastavro_agrees(label: str) -> None:
    new = COMPATIBLE[label]
    assert backward_problems(new, BASE) == []
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(BASE), {"a": 1, "b": "x", "c": [1.5]})
    buf.seek(0)
    read = fastavro.schemaless_reader(buf, fastavro.parse_schema(BASE), fastavro.parse_schema(new))
    assert isinstance(read, dict)


@pytest.mark.parametrize("label", sorted(BREAKING))
def test_checker_flags_breaking_changes(label: str) -> None:
    new = BREAKING[label]
    old = BASE
    if new is None:
        old = _changed(retype=("a", "long"))
        new = BASE
    assert backward_problems(new, old), f"{label} should be flagged"


def test_checker_follows_named_types_in_committed_schemas() -> None:
    mv = schema_json("ModelVersion")
    assert backward_problems(mv, mv) == []
    broken = copy.deepcopy(mv)
    lineage = next(f for f in broken["fields"] if f["name"] == "lineage")
    lineage["type"]["fields"].append({"name": "owner", "type": "string"})
    assert backward_problems(broken, mv) == [
        "ModelVersion.lineage.owner: new field without a default"
    ]
