"""Per-model admission: a bounded number of calls run, a bounded number wait, the rest are refused.

Waiting happens inside the caller's deadline (the servicer's timeout surrounds it), and a waiter
that is cancelled leaves the queue at once because it is only an asyncio waiter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType

from modelwire.core.errors import Overloaded, retry_delay
from modelwire.observe.guard import never_fails

# What a refusal suggests before any call has finished; afterwards the suggestion follows how long
# calls hold a slot (a moving average), scaled by the queue ahead of a newcomer.
INITIAL_HOLD_S = 1.0
_HOLD_WEIGHT = 0.2


class Admission:
    def __init__(self, model: str, max_concurrency: int, max_queue: int) -> None:
        self.model = model
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.in_flight = 0
        self.queued = 0
        self._slots = asyncio.Semaphore(max_concurrency)
        self._hold_s = INITIAL_HOLD_S
        # Told (model, in_flight, queued) after every change, e.g. to keep gauges current.
        self.observer: Callable[[str, int, int], None] | None = None

    def _changed(self) -> None:
        if self.observer is not None:
            never_fails(
                "the admission gauges", self.observer, self.model, self.in_flight, self.queued
            )

    def retry_after_s(self) -> float:
        """When a slot is likely free for a newcomer: every call ahead of it (running and queued)
        holds a slot about as long as recent calls did, `max_concurrency` at a time."""
        return self._hold_s * (self.queued + 1) / self.max_concurrency

    def slot(self) -> _Slot:
        """`async with admission.slot():` holds one slot for the block, or refuses the call
        (Overloaded) when the queue is full too."""
        return _Slot(self)


class _Slot:
    """One call's hold on a slot. A class rather than an @asynccontextmanager generator, which
    costs every call three times as much (callgrind)."""

    __slots__ = ("_admission", "_started")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._started = 0.0

    async def __aenter__(self) -> None:
        admission = self._admission
        slots = admission._slots
        if slots.locked():
            if admission.queued >= admission.max_queue:
                delay = retry_delay(admission.retry_after_s())
                raise Overloaded(
                    f"model {admission.model!r} is at capacity ({admission.in_flight} running, "
                    f"{admission.queued} waiting); retry after {delay:.1f}s",
                    retry_after_s=delay,
                    not_started=True,
                )
            admission.queued += 1
            admission._changed()
            try:
                await slots.acquire()
            finally:
                admission.queued -= 1
                admission._changed()
        else:  # a free slot is taken at once: nobody saw this call waiting
            await slots.acquire()
        admission.in_flight += 1
        admission._changed()
        self._started = time.monotonic()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        admission = self._admission
        admission._hold_s += _HOLD_WEIGHT * (time.monotonic() - self._started - admission._hold_s)
        admission.in_flight -= 1
        admission._slots.release()
        admission._changed()
