"""SIGTERM and SIGINT stop a run at a chunk boundary, so what it leaves is resumable and nothing scored is lost.

A preempted node or `kubectl delete` sends SIGTERM and waits a grace period
(Kubernetes: 30 s by default) before SIGKILL; Ctrl-C sends SIGINT. The first
signal lets the chunk at hand be written and recorded, then the run stops with
128 + the signal's number (143, 130), as a process killed by it would. A second
signal stops at once; the record still holds the last complete chunk.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger("sentiment-score")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequests:
    """While entered (on the main thread): SIGTERM / SIGINT are noted, and `check()` raises Stopped at the next chunk boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise Stopped(signum)
        self.signum = signum
        log.warning("%s: stopping after the chunk at hand (send it again to stop now)", signal.Signals(signum).name)

    def check(self) -> None:
        if self.signum is not None:
            raise Stopped(self.signum)

    def __enter__(self) -> StopRequests:
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
