"""The caller's deadline, where providers can read it without knowing gRPC.

The edge sets it once per call (`rpc/status.CallScope`); an HTTP provider bounds a unary upstream
wait by it instead of a fixed read timeout, and skips a retry wait that cannot fit in it. Each gRPC
call runs in its own task, whose context is a copy, so the value never leaks to another call; it is
not reset at the end because grpc.aio may close a stream from another task.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("modelwire_deadline", default=None)


def set_deadline(remaining_s: float | None) -> None:
    """The caller allows `remaining_s` more seconds from now (None: no deadline)."""
    _deadline.set(None if remaining_s is None else time.monotonic() + remaining_s)


def remaining_s() -> float | None:
    """Seconds left before the caller's deadline (≤ 0 once passed), or None without a deadline."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()
