"""Where the local stack keeps its data and jars, and where the files it reads ship."""

from __future__ import annotations

import os
from pathlib import Path


def checkout_root() -> Path | None:
    """The repository root when driftline runs from a checkout, else None (installed).

    A checkout has pyproject.toml next to the driftline/ package folder; an install from a
    wheel has driftline/ in site-packages, with no pyproject.toml beside it.
    """
    import driftline

    package = Path(driftline.__file__).resolve().parent
    root = package.parent
    return root if (root / "pyproject.toml").is_file() else None


def state_dir() -> Path:
    """What the stack makes: <checkout>/.driftline, else $XDG_DATA_HOME/driftline.

    XDG_DATA_HOME defaults to ~/.local/share (a relative value is ignored, as the XDG base
    directory specification says).
    """
    root = checkout_root()
    if root is not None:
        return root / ".driftline"
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "driftline"


def default_data_dir() -> Path:
    """Stack data dir: env DRIFTLINE_STACK_DIR, else the state dir's stack/ (see state_dir)."""
    env = os.environ.get("DRIFTLINE_STACK_DIR")
    return Path(env) if env else state_dir() / "stack"


def deploy_dir() -> Path:
    """Folder holding pom.xml and the log4j2 config: env DRIFTLINE_DEPLOY_DIR, else resources/.

    resources/ is package data, so it ships in the wheel; deploy/local links to its files.
    """
    env = os.environ.get("DRIFTLINE_DEPLOY_DIR")
    return Path(env) if env else Path(__file__).resolve().parent / "resources"
