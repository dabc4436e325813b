"""Instance slots: unique among live instances on a host, the same again after a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftline.services.runtime import instance


def test_live_instances_get_distinct_slots_and_a_freed_slot_is_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLINE_INSTANCE_DIR", str(tmp_path))
    first = instance.claim("blue.driftline-inference-sensor", host="node")
    second = instance.claim("blue.driftline-inference-sensor", host="node")
    other_group = instance.claim("green.driftline-inference-sensor", host="node")
    assert (first.instance_id, second.instance_id) == ("node-0", "node-1")
    assert other_group.instance_id == "node-0"
    first.release()  # the first instance died: its restart takes its id back
    again = instance.claim("blue.driftline-inference-sensor", host="node")
    assert again.instance_id == "node-0"
    for slot in (second, other_group, again):
        slot.release()
