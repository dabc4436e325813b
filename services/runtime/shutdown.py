"""A stop flag set by SIGTERM or SIGINT, so loops finish their batch and exit cleanly."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopFlag:
    """Callable flag: `while not stop(): ...`; a second Ctrl-C forces KeyboardInterrupt."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def __call__(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def install(self) -> StopFlag:
        """Handle SIGTERM and SIGINT in the main thread."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            if self._event.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        return self
