"""Drift scenarios load from TOML, validate clearly, and say which world holds when."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from driftline.services.simulator import scenario as sc
from driftline.services.simulator.fleet import FLASHOVER, HEALTHY, Fleet


def test_built_in_aging_changes_the_world_at_two_minutes() -> None:
    s = sc.load("aging")
    assert s.drift_at_s == 120
    assert s.phase_at(0).sensor.leakage_gain == 1.0
    assert s.phase_at(119.9).name == "baseline"
    assert s.phase_at(120).sensor.leakage_gain == 1.5
    assert s.phase_at(10_000).image.haze == 0.25
    moved = sc.shifted(s, 30)
    assert moved.drift_at_s == 30
    assert moved.phase_at(31).sensor.humidity_mean == 76.0


def test_file_scenario_and_its_errors(tmp_path: Path) -> None:
    good = tmp_path / "wet.toml"
    good.write_text('[[phase]]\nat_s = 10\nname = "wet"\nsensor = { humidity_mean = 90 }\n')
    s = sc.load(str(good))
    assert [p.name for p in s.phases] == ["baseline", "wet"], "a baseline is added at 0"
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text("[[phase]]\nat_s = 0\nsensor = { humidity = 90 }\n")
    with pytest.raises(sc.ScenarioError, match="unknown keys \\['humidity'\\]"):
        sc.load(str(bad_key))
    order = tmp_path / "order.toml"
    order.write_text("[[phase]]\nat_s = 50\n[[phase]]\nat_s = 20\n")
    with pytest.raises(sc.ScenarioError, match="increase"):
        sc.load(str(order))
    with pytest.raises(sc.ScenarioError, match="not a file"):
        sc.load("no-such-scenario")
    broken = tmp_path / "broken.toml"
    broken.write_text("[[phase]\n")
    with pytest.raises(sc.ScenarioError, match="not valid TOML"):
        sc.load(str(broken))


def test_fleet_conditions_evolve_and_flashover_is_absorbing() -> None:
    fleet = Fleet(np.random.default_rng(0), 2000, fault_fraction=0.0)
    assert (fleet.conditions == HEALTHY).all()
    assert fleet.evolve(0) == 0
    changed = fleet.evolve(1.0)
    share = changed / 2000
    assert 0.2 < share < 0.35, (
        f"about 1 - exp(-0.35) of healthy insulators move in an hour: {share}"
    )
    fleet.conditions[:] = FLASHOVER
    assert fleet.evolve(100.0) == 0
