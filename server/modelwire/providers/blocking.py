"""The thread-pool bridge of blocking providers: work on the executor, chunks back to the loop.

When the async consumer goes away (cancel, deadline, disconnect), a job that has not started is
dropped, a running one is told through its `Cancellation` and waited for: the consumer returns
only once the thread has stopped, so whatever bounds the consumer (the model's admission slot)
bounds the thread too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

from modelwire.core.cancellation import Cancellation, outlive_cancels
from modelwire.core.types import ModelOutput

T = TypeVar("T")

_END = object()


async def until_done(job: concurrent.futures.Future[Any]) -> None:
    """Waits for a started job even if the waiting task is cancelled meanwhile; that cancel is
    re-raised once the job is done. The job's own outcome is the caller's to read, not ours."""
    waiter = asyncio.wrap_future(job)
    try:
        await outlive_cancels(waiter)
    finally:
        if waiter.done() and not waiter.cancelled():
            waiter.exception()  # retrieved, so asyncio does not warn about it


async def run_blocking(executor: Executor, work: Callable[[], T]) -> T:
    """`work()` on the executor. If the caller leaves first, work not yet started never starts
    and started work is waited for, so the caller never outlives the thread it occupies."""
    job = executor.submit(work)
    try:
        return await asyncio.wrap_future(job)
    except asyncio.CancelledError:
        if not job.cancel():
            await until_done(job)
        raise


async def pump(
    executor: Executor, produce: Callable[[Cancellation], Iterator[ModelOutput]]
) -> AsyncGenerator[ModelOutput, None]:
    """Runs a blocking iterator on the executor and hands its chunks to the event loop.

    The thread wakes the loop only when the loop has taken everything handed over before: a
    loop that lags behind (a busy worker) then takes the chunks in batches, one wake-up for
    several, instead of one cross-thread wake-up per token."""
    loop = asyncio.get_running_loop()
    handed: deque[object] = deque()
    lock = threading.Lock()
    ready = asyncio.Event()
    wake_pending = False
    cancellation = Cancellation()

    def hand_over(item: object) -> None:
        nonlocal wake_pending
        # Once the consumer has left nobody reads the chunks, and its loop may be closing.
        if cancellation.cancelled:
            return
        with lock:
            handed.append(item)
            if wake_pending:
                return
            wake_pending = True
        loop.call_soon_threadsafe(ready.set)

    def run() -> None:
        if cancellation.cancelled:  # left while this job waited for a thread
            return
        chunks = produce(cancellation)
        try:
            for chunk in chunks:
                if cancellation.cancelled:
                    break
                hand_over(chunk)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            hand_over(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
            hand_over(_END)

    job = executor.submit(run)
    try:
        while True:
            await ready.wait()
            with lock:
                batch = list(handed)
                handed.clear()
                wake_pending = False
                ready.clear()
            for item in batch:
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, ModelOutput)
                yield item
    finally:
        cancellation.cancel()
        if not job.cancel():
            await until_done(job)
