"""Drift scenarios: phases of the simulated world, read from a small TOML file.

    # aging.toml: the fleet ages and the weather turns humid two minutes in
    [[phase]]
    at_s = 0
    name = "baseline"

    [[phase]]
    at_s = 120
    name = "humid season, aged insulators"
    sensor = { humidity_mean = 78.0, leakage_gain = 1.5, discharge_gain = 1.6 }
    image = { brightness = 0.75, haze = 0.25 }

Each phase holds from its `at_s` (seconds since the simulation started) until the next one.
`sensor` keys are fields of fleet.SensorConditions, `image` keys of images.ImageConditions;
anything unset keeps the training world's default.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftline.services.simulator.fleet import SensorConditions
from driftline.services.simulator.images import ImageConditions


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Phase:
    at_s: float
    name: str
    sensor: SensorConditions = field(default_factory=SensorConditions)
    image: ImageConditions = field(default_factory=ImageConditions)


@dataclass(frozen=True)
class Scenario:
    name: str
    phases: tuple[Phase, ...]

    def phase_at(self, t_s: float) -> Phase:
        current = self.phases[0]
        for phase in self.phases:
            if phase.at_s <= t_s:
                current = phase
        return current

    @property
    def drift_at_s(self) -> float | None:
        """When the first phase after the baseline starts, if any."""
        return self.phases[1].at_s if len(self.phases) > 1 else None


def _conditions(cls: type[Any], raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expected a table of {cls.__name__} fields")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ScenarioError(
            f"{where}: unknown keys {sorted(unknown)}; known: {', '.join(sorted(known))}"
        )
    try:
        return cls(**{k: float(v) for k, v in raw.items()})
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: {exc}") from exc


def parse(data: dict[str, Any], name: str) -> Scenario:
    raw_phases = data.get("phase")
    if not isinstance(raw_phases, list) or not raw_phases:
        raise ScenarioError(f"{name}: needs at least one [[phase]]")
    phases: list[Phase] = []
    for i, raw in enumerate(raw_phases):
        where = f"{name}: phase {i + 1}"
        if not isinstance(raw, dict) or "at_s" not in raw:
            raise ScenarioError(f"{where}: needs at_s")
        at = float(raw["at_s"])
        if at < 0 or (phases and at <= phases[-1].at_s):
            raise ScenarioError(f"{where}: at_s must be >= 0 and increase from phase to phase")
        phases.append(
            Phase(
                at_s=at,
                name=str(raw.get("name", f"phase {i + 1}")),
                sensor=_conditions(SensorConditions, raw.get("sensor"), f"{where}.sensor"),
                image=_conditions(ImageConditions, raw.get("image"), f"{where}.image"),
            )
        )
    if phases[0].at_s != 0:
        phases.insert(0, Phase(0.0, "baseline"))
    return Scenario(name, tuple(phases))


BUILT_IN: dict[str, str] = {
    "steady": """
[[phase]]
at_s = 0
name = "baseline"
""",
    "aging": """
[[phase]]
at_s = 0
name = "baseline"

[[phase]]
at_s = 120
name = "humid season, aged insulators"
sensor = { humidity_mean = 76.0, leakage_gain = 1.5, discharge_gain = 1.6 }
image = { brightness = 0.75, haze = 0.25 }
""",
}


def load(name_or_path: str | None) -> Scenario:
    """A built-in scenario by name (steady, aging), or a TOML file by path."""
    if name_or_path is None:
        name_or_path = "steady"
    if name_or_path in BUILT_IN:
        return parse(tomllib.loads(BUILT_IN[name_or_path]), name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        raise ScenarioError(
            f"no scenario {name_or_path!r}: not a file, nor one of {', '.join(sorted(BUILT_IN))}"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from exc
    return parse(data, path.stem)


def shifted(scenario: Scenario, drift_at_s: float) -> Scenario:
    """The same scenario with its first change moved to `drift_at_s` (for short runs)."""
    if len(scenario.phases) < 2:
        return scenario
    offset = drift_at_s - scenario.phases[1].at_s
    phases = [scenario.phases[0]] + [
        dataclasses.replace(p, at_s=max(0.001, p.at_s + offset)) for p in scenario.phases[1:]
    ]
    return Scenario(scenario.name, tuple(phases))
