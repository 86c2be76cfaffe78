"""Who asked, and by when: what every protocol's request carries through the service to the batch that serves it.

`Service.admit` builds one per inference request once the caller's key and
deadline are checked; `Service.predict` takes it, and each queued text keeps it
(`app.runner.Job.context`), so the batch step sees the requests it serves.
Per-request data a step needs later (a trace context, say) goes here rather
than into another parameter along the path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.tracing import Enqueued


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str  # the X-Request-ID (HTTP) or "-" where a protocol has none
    deadline: float | None  # time.monotonic() by which the answer is due; None = no limit
    trace: Enqueued | None = None  # telemetry hook: the request's span context as its texts queue (app/tracing.py); None when off

    def remaining(self) -> float | None:
        """Seconds left until the deadline (<= 0 once passed); None = no limit."""
        return None if self.deadline is None else self.deadline - time.monotonic()
