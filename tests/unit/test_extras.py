"""Each image installs every package the commands it runs import (issue 15): statically, by import.

A fresh venv per extra cannot be built offline, so the proof has two halves. Statically: grimp's
import graph (function-level imports included, TYPE_CHECKING ones left out, since they never run)
gives every external package reachable from a unit's entry modules, and each must come from a
distribution that the unit's Dockerfile stage installs: the base dependencies of pyproject.toml
plus the extras named on its `pip install '.[...]'` line, expanded through the installed
distributions' Requires-Dist. By import: a subprocess in which every distribution outside that
install is made unimportable imports each module the unit reaches, so an image missing a
package fails here, not at start-up in a cluster.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import grimp
import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
PROJECT = "driftline"


@dataclass(frozen=True)
class Unit:
    """One deployable image: its Dockerfile target, the subcommands run from it, their services."""

    target: str
    commands: tuple[str, ...]
    services: tuple[str, ...]

    def entries(self) -> tuple[str, ...]:
        return (*(f"driftline.services.commands.{c}" for c in self.commands), *self.services)


UNITS = (
    Unit(
        "services",
        ("infer", "features", "alerts", "simulate", "topics", "dlq", "models"),
        (
            "driftline.services.inference.service",
            "driftline.services.features.service",
            "driftline.services.alerts.service",
            "driftline.services.simulator.sensors",
            "driftline.services.simulator.fleet",
            "driftline.services.simulator.images",
        ),
    ),
    Unit("trainer", ("train",), ("driftline.trainer.service",)),
)

# Entries whose static closure is known to reach beyond their image, with the reason. Strict:
# once the import is fixed the test passes, xfail turns that into a failure, and the entry
# leaves this table.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dockerfile_extras(text: str) -> dict[str, frozenset[str]]:
    """For each stage that pip-installs the project: the extras it installs (inherited ones too)."""
    stage_re = re.compile(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", re.IGNORECASE)
    install_re = re.compile(r"\bpip\s+install\b.*?(?<![\w/])\.(?:\[([^\]]*)\])?(?=['\"]?(?:\s|$))")
    parent: dict[str, str] = {}
    own: dict[str, set[str]] = {}
    current: str | None = None
    for line in text.replace("\\\n", " ").splitlines():
        stage = stage_re.match(line.strip())
        if stage:
            current = stage.group(2) or stage.group(1)
            parent[current] = stage.group(1)
            continue
        if current is None:
            continue
        for match in install_re.finditer(line):
            extras = match.group(1) or ""
            own.setdefault(current, set()).update(e.strip() for e in extras.split(",") if e.strip())

    def extras_of(stage: str) -> set[str] | None:
        inherited = extras_of(parent[stage]) if parent.get(stage) in parent else None
        mine = own.get(stage)
        if mine is None:
            return inherited
        return mine | (inherited or set())

    return {s: frozenset(e) for s in parent if (e := extras_of(s)) is not None}


def project_requirements(extras: Iterable[str]) -> list[Requirement]:
    """pyproject's base dependencies plus the named extras (self-references expanded)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional: Mapping[str, list[str]] = project.get("optional-dependencies", {})
    wanted, seen = list(extras), set[str]()
    reqs = [Requirement(r) for r in project["dependencies"]]
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        assert extra in optional, f"the Dockerfile installs extra {extra!r}; pyproject has none"
        for text in optional[extra]:
            req = Requirement(text)
            if normalize(req.name) == PROJECT:
                wanted.extend(req.extras)
            else:
                reqs.append(req)
    return reqs


def installed_by(reqs: Iterable[Requirement]) -> frozenset[str]:
    """Every distribution pip brings for these requirements, through installed Requires-Dist."""
    queue = [(req, frozenset[str]()) for req in reqs]
    done: set[tuple[str, frozenset[str]]] = set()
    while queue:
        req, asked = queue.pop()
        # A marker belongs to the extras its parent was asked for ("" when none).
        if req.marker is not None and not any(
            req.marker.evaluate({"extra": e}) for e in {"", *asked}
        ):
            continue
        name, extras = normalize(req.name), frozenset(req.extras)
        if (name, extras) in done:
            continue
        done.add((name, extras))
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: known by name, its own requirements unknown
        queue.extend((Requirement(r), extras) for r in requires)
    return frozenset({PROJECT} | {name for name, _ in done})


@cache
def graph() -> Any:
    return grimp.build_graph(
        PROJECT, include_external_packages=True, exclude_type_checking_imports=True
    )


@cache
def unit_install(target: str) -> tuple[frozenset[str], frozenset[str]]:
    """(the extras the Dockerfile stage installs, the distributions that brings)."""
    stages = dockerfile_extras((REPO / "Dockerfile").read_text())
    assert target in stages, f"no Dockerfile stage {target!r} installs driftline: {sorted(stages)}"
    extras = stages[target]
    return extras, installed_by(project_requirements(extras))


def reachable(entry: str) -> set[str]:
    return {entry, *graph().find_upstream_modules(entry)}


def is_external(module: str) -> bool:
    top = module.partition(".")[0]
    return top != PROJECT and top not in sys.stdlib_module_names


def providers() -> dict[str, set[str]]:
    return {
        top: {normalize(d) for d in dists}
        for top, dists in metadata.packages_distributions().items()
    }


def cases() -> list[Any]:
    out = []
    for unit in UNITS:
        for entry in unit.entries():
            gap = KNOWN_GAPS.get((unit.target, entry))
            marks = [pytest.mark.xfail(strict=True, reason=gap)] if gap else []
            out.append(pytest.param(unit, entry, marks=marks, id=f"{unit.target}:{entry}"))
    return out


def test_the_dockerfile_targets_install_the_extras_the_units_name() -> None:
    stages = dockerfile_extras((REPO / "Dockerfile").read_text())
    assert stages["services"] == {"inference", "features"}
    assert stages["trainer"] == {"trainer"}
    services, _ = unit_install("services")
    assert "torch" not in unit_install("services")[1], "the services image must stay torch-free"
    assert services.isdisjoint({"trainer", "all"})


@pytest.mark.parametrize(("unit", "entry"), cases())
def test_every_package_an_entry_imports_comes_with_its_image(unit: Unit, entry: str) -> None:
    extras, installed = unit_install(unit.target)
    known = providers()
    missing = []
    for module in sorted(m for m in reachable(entry) if is_external(m)):
        dists = known.get(module.partition(".")[0], set())
        if dists & installed:
            continue
        chain = " -> ".join(graph().find_shortest_chain(importer=entry, imported=module))
        what = ", ".join(sorted(dists)) or "no installed distribution provides it"
        missing.append(f"{chain}: {module} ({what}) is not installed by '.[{','.join(extras)}]'")
    assert not missing, f"the {unit.target} image lacks:\n  " + "\n  ".join(missing)


# Run in a subprocess: every top-level module of a distribution outside the image is refused, as
# it would be in a fresh venv holding only that image's install, then each module is imported.
IMPORT_SCRIPT = r"""
import importlib, importlib.abc, importlib.metadata, json, re, sys, traceback
allowed, modules = json.loads(sys.argv[1]), json.loads(sys.argv[2])
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
blocked = {
    top for top, dists in importlib.metadata.packages_distributions().items()
    if top not in sys.stdlib_module_names and top != "driftline"
    and not any(norm(d) in allowed for d in dists)
}
class NotInImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in this image)", name=name)
        return None
sys.meta_path.insert(0, NotInImage())
failed = {}
for module in modules:
    try:
        importlib.import_module(module)
    except Exception as exc:
        failed[module] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""


@cache
def import_failures(target: str) -> dict[str, str]:
    """Each driftline module the unit reaches (and the CLI) imported where only its install is."""
    _, installed = unit_install(target)
    unit = next(u for u in UNITS if u.target == target)
    modules = sorted(
        {m for e in unit.entries() for m in reachable(e) if m.partition(".")[0] == PROJECT}
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            IMPORT_SCRIPT,
            json.dumps(sorted(installed)),
            json.dumps(["driftline.services.cli", *modules]),
        ],
        cwd=REPO,  # the checkout's driftline/ wins over any installed copy
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    failures: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return failures


@pytest.mark.parametrize(("unit", "entry"), cases())
def test_every_module_an_entry_reaches_imports_in_its_image(unit: Unit, entry: str) -> None:
    failures = import_failures(unit.target)
    broken = {m: failures[m] for m in sorted(reachable(entry)) if m in failures}
    assert not broken, f"in the {unit.target} image, importing fails for:\n  " + "\n  ".join(
        f"{m}: {why}" for m, why in broken.items()
    )


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.target)
def test_the_cli_imports_in_each_image(unit: Unit) -> None:
    failures = import_failures(unit.target)
    assert "driftline.services.cli" not in failures, failures["driftline.services.cli"]


def deployed_commands() -> list[tuple[str, str, str]]:
    """(where, image, subcommand) for every driftline container in compose and the manifests."""
    out = []
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for name, svc in compose["services"].items():
        image = str(svc.get("image", ""))
        if image.startswith("driftline:"):
            build = svc.get("build")
            if build is not None:
                assert f"driftline:{build['target']}" == image, f"compose {name}: tag != target"
            out.append((f"compose {name}", image, svc["command"][0]))
    for path in sorted((REPO / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = (doc or {}).get("spec", {})
            pod = spec.get("template", spec.get("jobTemplate", {}).get("spec", {}).get("template"))
            for container in ((pod or {}).get("spec") or {}).get("containers", []):
                if str(container.get("image", "")).startswith("driftline:"):
                    where = f"{path.name} {container['name']}"
                    out.append((where, container["image"], container["args"][0]))
    return out


def test_deployments_run_each_image_only_for_the_commands_checked_here() -> None:
    commands = {f"driftline:{u.target}": set(u.commands) for u in UNITS}
    deployed = deployed_commands()
    assert {image for _, image, _ in deployed} == set(commands)
    for where, image, command in deployed:
        assert command in commands[image], f"{where} runs `{command}` from {image}"
