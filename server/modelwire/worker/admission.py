"""Per-model admission: a bounded number of calls run, a bounded number wait, the rest are refused.

Waiting happens inside the caller's deadline (the servicer's timeout surrounds it), and a waiter
that is cancelled leaves the queue at once because it is only an asyncio waiter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from modelwire.core.errors import Overloaded

RETRY_AFTER_S = 1.0


class Admission:
    def __init__(self, model: str, max_concurrency: int, max_queue: int) -> None:
        self.model = model
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.in_flight = 0
        self.queued = 0
        self._slots = asyncio.Semaphore(max_concurrency)
        # Told (model, in_flight, queued) after every change, e.g. to keep gauges current.
        self.observer: Callable[[str, int, int], None] | None = None

    def _changed(self) -> None:
        if self.observer is not None:
            self.observer(self.model, self.in_flight, self.queued)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self.queued >= self.max_queue:
            raise Overloaded(
                f"model {self.model!r} is at capacity ({self.in_flight} running, {self.queued} waiting); "
                f"retry after {RETRY_AFTER_S:g}s",
                retry_after_s=RETRY_AFTER_S,
                not_started=True,
            )
        self.queued += 1
        self._changed()
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
            self._changed()
        self.in_flight += 1
        self._changed()
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()
            self._changed()
