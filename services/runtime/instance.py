"""A stable, unique name per running instance on a host, for transactional ids.

An exactly-once producer's transactional id must be unique per live instance (two live
producers with one id fence each other on every transaction) and stable across restarts (a
restarted instance that takes its old id fences its dead predecessor at once, instead of
waiting out the transaction timeout). The host name alone gives neither when several
instances share a host, so each instance claims the lowest free slot of its group on the host,
held by an advisory lock for the life of the process: the first instance is `<host>-0`, a
second beside it `<host>-1`, and a restarted first one gets `<host>-0` back.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import IO

MAX_SLOTS = 256


class InstanceSlot:
    """A claimed slot; release() (or process exit) frees it for the next instance."""

    def __init__(self, instance_id: str, handle: IO[str] | None) -> None:
        self.instance_id = instance_id
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def lock_dir() -> Path:
    """Where the slots' lock files live: DRIFTLINE_INSTANCE_DIR, else the system temp dir."""
    env = os.environ.get("DRIFTLINE_INSTANCE_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / "driftline-instances"


def claim(group: str, host: str | None = None) -> InstanceSlot:
    """The lowest free slot of `group` on this host, as `<host>-<n>`."""
    host = host or socket.gethostname()
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", group)
    for n in range(MAX_SLOTS):
        handle = (folder / f"{safe}-{n}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return InstanceSlot(f"{host}-{n}", handle)
    raise RuntimeError(f"{MAX_SLOTS} instances of {group!r} already run on {host}")
