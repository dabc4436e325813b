"""Detached stack processes: pid files, /proc liveness and cmdline checks, spawn, stop, reap."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Popen handles of processes started by this Python process, kept so that they are reaped
# (no zombies, no "subprocess still running" ResourceWarning) when stopped from here.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _proc_state(pid: int) -> str | None:
    """Linux process state letter from /proc/<pid>/stat, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError:
        return "?"
    _, _, rest = raw.rpartition(")")
    fields = rest.split()
    return fields[0] if fields else "?"


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int) -> bool:
    """True if pid is a live (non-zombie) process."""
    if pid <= 0:
        return False
    _reap(pid)
    if Path("/proc/self").exists():
        state = _proc_state(pid)
        if state in ("Z", "X", "x"):
            # Exiting. A multi-threaded leader (the JVM) shows Z until its last thread is gone;
            # for our own child wait until it can really be reaped (sockets closed by then).
            _reap(pid)
            return pid in _CHILDREN
        return state is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmdline(pid: int) -> list[str]:
    """The command line of pid, from /proc or else ps; [] when it cannot be read."""
    proc = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self").exists():
        try:
            raw = proc.read_bytes()
        except OSError:
            return []
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    try:  # no procfs (macOS): ask ps
        out = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except OSError:
        return []
    return out.split()


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, or a note that it is missing or empty."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def write_atomic(path: Path, text: str) -> None:
    """Write text to path through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def spawn(cmd: Sequence[str], out_path: Path, cwd: Path) -> int:
    """Start cmd detached (own session), stdout and stderr to out_path; return its pid."""
    # Fresh output file per start (the previous one is kept as *.prev), so that the log
    # tail shown on an early exit belongs to this start.
    if out_path.exists():
        os.replace(out_path, out_path.with_name(out_path.name + ".prev"))
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


@dataclass(frozen=True)
class PidFile:
    """The pid file of one service, and the check that a live pid is still that service."""

    service: str
    path: Path
    is_ours: Callable[[int], bool]

    def read(self) -> int | None:
        try:
            return int(self.path.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None

    def write(self, pid: int) -> None:
        write_atomic(self.path, f"{pid}\n")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def running_pid(self) -> int | None:
        """The recorded pid if it is alive and still ours, else None."""
        pid = self.read()
        if pid is not None and pid_alive(pid) and self.is_ours(pid):
            return pid
        return None


def stop(pid_files: Sequence[PidFile], timeout_s: float, log: Callable[[str], None]) -> None:
    """SIGTERM the recorded pids that are still ours, SIGKILL what outlives ``timeout_s``."""
    by_service = {pid_file.service: pid_file for pid_file in pid_files}
    signalled: dict[str, int] = {}
    for pid_file in pid_files:
        service = pid_file.service
        pid = pid_file.read()
        if pid is None:
            continue
        if not pid_alive(pid):
            pid_file.remove()
            continue
        if not pid_file.is_ours(pid):
            log(
                f"localstack: pid {pid} from {pid_file.path.name} is no longer "
                f"our {service}; leaving it alone"
            )
            pid_file.remove()
            continue
        log(f"localstack: stopping {service} (pid {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        signalled[service] = pid

    deadline = time.monotonic() + timeout_s
    while signalled and time.monotonic() < deadline:
        signalled = {svc: pid for svc, pid in signalled.items() if pid_alive(pid)}
        for pid_file in pid_files:
            if pid_file.service not in signalled:
                pid_file.remove()
        if signalled:
            time.sleep(0.1)
    for service, pid in signalled.items():
        if pid_alive(pid) and by_service[service].is_ours(pid):
            log(f"localstack: {service} (pid {pid}) ignored SIGTERM, sending SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    kill_deadline = time.monotonic() + 10.0
    while any(pid_alive(pid) for pid in signalled.values()):
        if time.monotonic() > kill_deadline:
            raise RuntimeError(f"could not stop {signalled} even with SIGKILL")
        time.sleep(0.1)
    for service in signalled:
        by_service[service].remove()
