"""The services of a demo run as child processes: start, scrape /metrics, stop, bootstrap."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from driftline.services.demo.config import DemoConfig

Say = Callable[[str], None]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def scrape(self) -> Samples:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1
            ) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1
            ) as r:
                return bool(r.status == 200)
        except OSError:
            return False


def sample_value(samples: Samples, name: str, **labels: str) -> float | None:
    """Sum of the samples of `name` whose labels include `labels`."""
    found = [
        v
        for (n, lbls), v in samples.items()
        if n == name and all((k, val) in lbls for k, val in labels.items())
    ]
    return sum(found) if found else None


def spawn(name: str, args: list[str], env: dict[str, str], logs: Path, port: int) -> Service:
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftline.services.cli", *args, "--metrics-port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Service(name, proc, port, log)


def stop_all(services: list[Service], timeout_s: float = 30.0) -> None:
    for s in services:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for s in services:
        try:
            s.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait(5)


def bootstrap(cfg: DemoConfig, env: dict[str, str], logs: Path, say: Say) -> None:
    say(f"bootstrap: training the first {' and '.join(cfg.modalities)} models on simulated data")
    cmd = [
        sys.executable,
        "-m",
        "driftline.services.cli",
        "train",
        "--bootstrap",
        "--windows",
        str(cfg.bootstrap_windows),
        "--images",
        str(cfg.bootstrap_images),
    ]
    if not cfg.images:
        cmd += ["--modality", "sensor"]
    with (
        (logs / "bootstrap.log").open("wb") as log,
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc,
    ):
        assert proc.stdout is not None
        for raw in proc.stdout:
            log.write(raw)
            line = raw.decode(errors="replace").rstrip()
            if line:
                say(f"  {line}")
    if proc.returncode != 0:
        raise RuntimeError(f"bootstrap training failed; see {logs / 'bootstrap.log'}")
