"""Default locations of the local stack's data dir and of the deploy/local files it reads."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The repository root (this file is services/localstack/paths.py)."""
    return Path(__file__).resolve().parents[2]


def default_data_dir() -> Path:
    """Stack data dir: env DRIFTLINE_STACK_DIR, else <repo root>/.driftline/stack."""
    env = os.environ.get("DRIFTLINE_STACK_DIR")
    return Path(env) if env else repo_root() / ".driftline" / "stack"


def deploy_dir() -> Path:
    """Folder holding pom.xml and the log4j2 config: env DRIFTLINE_DEPLOY_DIR, else deploy/local."""
    env = os.environ.get("DRIFTLINE_DEPLOY_DIR")
    return Path(env) if env else repo_root() / "deploy" / "local"
