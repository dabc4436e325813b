"""One guard between torch's tracing exporter and everything else torch does in this process.

The trainer trains one model per worker thread. torch.export (behind torch.onnx.export) traces
through process-wide state: dispatch-mode stacks, fx patching, and the fx "current meta" that
even an optimizer's `zero_grad` touches on its way through torch's dynamo-disable wrapper. Two
exports at once corrupt each other's trace, and a training step in one thread while another
exports fails with errors such as `KeyError: 'custom'`. So training steps share the guard (any
number at once, they do not interfere) and an export holds it alone: it waits for the steps in
flight to end, and steps wait while it traces. A waiting export blocks new steps, so a busy
trainer cannot starve it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class TracingGuard:
    """A readers-writer lock: `step()` is shared, `export()` is exclusive and preferred."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._steps = 0
        self._exporting = False
        self._exports_waiting = 0

    @contextmanager
    def step(self) -> Iterator[None]:
        with self._cond:
            while self._exporting or self._exports_waiting:
                self._cond.wait()
            self._steps += 1
        try:
            yield
        finally:
            with self._cond:
                self._steps -= 1
                if not self._steps:
                    self._cond.notify_all()

    @contextmanager
    def export(self) -> Iterator[None]:
        with self._cond:
            self._exports_waiting += 1
            try:
                while self._exporting or self._steps:
                    self._cond.wait()
            finally:
                self._exports_waiting -= 1
            self._exporting = True
        try:
            yield
        finally:
            with self._cond:
                self._exporting = False
                self._cond.notify_all()


GUARD = TracingGuard()
