"""One backoff for every retry and reconnect loop: exponential, capped, with jitter.

Jitter (each delay drawn from [½, 1] of its step) keeps a fleet whose registry restarted from
reconnecting in lockstep.
"""

from __future__ import annotations

import asyncio
import random


def backoff_delay(attempt: int, initial_s: float, max_s: float) -> float:
    """The wait before retry number `attempt` (0 for the first retry)."""
    return min(max_s, initial_s * 2.0**attempt) * random.uniform(0.5, 1.0)


class Backoff:
    """The delays of one loop: `wait()` after a failure, `reset()` after a success."""

    def __init__(self, initial_s: float = 0.2, max_s: float = 2.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next_delay(self) -> float:
        delay = backoff_delay(self._attempt, self.initial_s, self.max_s)
        self._attempt += 1
        return delay

    async def wait(self) -> None:
        await asyncio.sleep(self.next_delay())
