"""The caller-has-left signal a blocking provider receives with each call.

A provider polls `cancelled` between steps it controls, and hooks `on_cancel` for native work that
cannot poll (llama.cpp's abort flag), so a cancelled call stops within one step of the native code
rather than at its next yield.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class Cancellation:
    def __init__(self) -> None:
        self._cancelled = threading.Event()
        # Callbacks run under this lock, so none can still run once its hook has been left: a
        # late cancel must never reach whatever the hooked resource serves next.
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Idempotent; callable from any thread. Callbacks must be quick and must not raise."""
        with self._lock:
            if self._cancelled.is_set():
                return
            self._cancelled.set()
            for callback in self._callbacks:
                callback()

    @contextmanager
    def on_cancel(self, callback: Callable[[], None]) -> Iterator[None]:
        """Runs `callback` when the call is cancelled while inside this block (at once if it already
        is)."""
        with self._lock:
            self._callbacks.append(callback)
            if self._cancelled.is_set():
                callback()
        try:
            yield
        finally:
            with self._lock:
                self._callbacks.remove(callback)


async def outlive_cancels(future: asyncio.Future[Any]) -> None:
    """Waits for `future` (work already started: a thread's job, a task cleaning up) even if the
    waiting task is cancelled meanwhile, once or again; that cancel is re-raised once it is done.
    Its own outcome is the caller's to read."""
    interrupted = False
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
