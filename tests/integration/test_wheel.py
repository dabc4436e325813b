"""The wheel is the product: one top-level package, its data files, and a CLI that runs installed.

Built from a copy of what the Dockerfile copies (so a stale build/ of the checkout never leaks
into it), installed into a fresh venv whose dependencies resolve through a .pth line to this
venv's site-packages (installing them offline is impossible). That line adds a plain directory,
not a site dir, so the editable finder of this checkout is not installed there: the fresh venv
imports the wheel's driftline, which the test checks. Needs no Kafka.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
# What the Dockerfile copies to build the package.
SOURCES = ["pyproject.toml", "README.md", "driftline", "schemas", "services", "trainer"]
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "target", "*.egg-info")

PROBE = """\
import json, sys
import driftline
from driftline.services.localstack import default_data_dir, default_jar_cache, paths
print(json.dumps({
    "file": driftline.__file__,
    "checkout_root": None if paths.checkout_root() is None else str(paths.checkout_root()),
    "deploy_dir": sorted(p.name for p in paths.deploy_dir().iterdir()),
    "data_dir": str(default_data_dir()),
    "jar_cache": str(default_jar_cache()),
    "editable_finder": any("__editable__" in m for m in sys.modules),
}))
"""


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=IGNORED)
        else:
            shutil.copy2(path, src / name)
    out = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", out, "."],
        cwd=src,
        check=True,
        capture_output=True,
        timeout=180,
    )
    (wheel,) = out.glob("driftline-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "driftline-test-deps.pth").write_text(deps + "\n")
    # --ignore-installed: the dev venv's driftline dist-info is visible through the .pth line,
    # and pip must neither skip this install nor try to uninstall that one.
    subprocess.run(
        [venv / "bin" / "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return venv


def test_the_wheel_holds_one_package_and_its_data_files_and_runs_installed(
    tmp_path: Path,
) -> None:
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    (dist_info,) = tops - {"driftline"}
    assert tops == {"driftline", dist_info}
    assert dist_info.startswith("driftline-")
    assert dist_info.endswith(".dist-info")
    for avsc in (REPO / "schemas" / "avro").glob("*.avsc"):
        assert f"driftline/schemas/avro/{avsc.name}" in names
    for resource in ("pom.xml", "log4j2.properties"):
        assert f"driftline/services/localstack/resources/{resource}" in names

    venv = _fresh_venv(tmp_path, wheel)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIFTLINE_", "PYTHON"))}
    env.pop("VIRTUAL_ENV", None)
    env["HOME"] = str(tmp_path / "home")
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")

    help_run = subprocess.run(
        [venv / "bin" / "driftline", "--help"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert help_run.returncode == 0, help_run.stderr
    assert "stack" in help_run.stdout

    stack_dir = tmp_path / "stack"
    status = subprocess.run(
        [venv / "bin" / "driftline", "stack", "status"],
        check=False,
        cwd=tmp_path,
        env={**env, "DRIFTLINE_STACK_DIR": str(stack_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 3, status.stdout + status.stderr  # 3: not running
    assert "kafka  stopped" in status.stdout
    assert "redis  stopped" in status.stdout
    assert str(stack_dir) in status.stdout

    probe = subprocess.run(
        [venv / "bin" / "python", "-c", PROBE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen = json.loads(probe.stdout)
    assert Path(seen["file"]).resolve().is_relative_to(venv.resolve())
    assert not seen["editable_finder"]
    # Installed, there is no checkout: the stack's files come from the package, its state
    # goes under $XDG_DATA_HOME.
    assert seen["checkout_root"] is None
    assert {"pom.xml", "log4j2.properties"} <= set(seen["deploy_dir"])
    assert seen["data_dir"] == str(tmp_path / "xdg" / "driftline" / "stack")
    assert Path(seen["jar_cache"]).parent == tmp_path / "xdg" / "driftline"
