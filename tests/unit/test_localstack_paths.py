"""Where the local stack looks for its files and keeps its state, in a checkout and installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftline.services.localstack import KAFKA_VERSION, default_data_dir, default_jar_cache, paths

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DRIFTLINE_STACK_DIR", "DRIFTLINE_JAR_CACHE", "DRIFTLINE_DEPLOY_DIR"):
        monkeypatch.delenv(name, raising=False)


def test_a_checkout_keeps_the_state_under_its_dot_driftline() -> None:
    assert paths.checkout_root() == REPO
    assert default_data_dir() == REPO / ".driftline" / "stack"
    # CI caches the jars at this path.
    assert default_jar_cache() == REPO / ".driftline" / f"kafka-lib-{KAFKA_VERSION}"


def test_the_environment_overrides_every_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DRIFTLINE_STACK_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("DRIFTLINE_JAR_CACHE", str(tmp_path / "j"))
    monkeypatch.setenv("DRIFTLINE_DEPLOY_DIR", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "s"
    assert default_jar_cache() == tmp_path / "j"
    assert paths.deploy_dir() == tmp_path / "d"


def test_installed_the_state_goes_under_xdg_data_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(paths, "checkout_root", lambda: None)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "driftline" / "stack"
    assert default_jar_cache() == tmp_path / "driftline" / f"kafka-lib-{KAFKA_VERSION}"
    # A relative XDG_DATA_HOME is ignored, as the XDG base directory specification says.
    monkeypatch.setenv("XDG_DATA_HOME", "relative")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "driftline" / "stack"


def test_deploy_local_links_to_the_files_the_package_ships() -> None:
    for name in ("pom.xml", "log4j2.properties"):
        shipped = paths.deploy_dir() / name
        assert shipped.is_file()
        link = REPO / "deploy" / "local" / name
        assert link.is_symlink()
        assert link.resolve() == shipped.resolve()
