"""Where a count runs: short inputs in place on the event loop, long ones on the counting thread.

Counting a short prompt takes microseconds and the hop to a thread costs more (measured: 570 µs
of CPU per call, bench/ablation.py); a long prompt, or very many short messages, would stall
every other call on the loop. The service takes an admission slot for exactly the long ones.

A long count runs on one thread kept for counting, or on the blocking pool while another count
holds that thread. tiktoken's regex (regex-automata's cache pool) takes a fast path on the one
thread that used it first and a slower one on every other thread: 21% more instructions per token
(callgrind, o200k, 10,000 tokens). tiktoken_counter.py makes the counting thread that first thread
for every encoding it loads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from modelwire.core.types import ModelMessage

T = TypeVar("T")

INLINE_COUNT_CHARS = 4096
INLINE_COUNT_MESSAGES = 64

_on_thread = threading.local()


def _mark_counting_thread() -> None:
    _on_thread.counting = True


# Started at its first count, as any ThreadPoolExecutor's threads are.
_counting = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="modelwire-count", initializer=_mark_counting_thread
)
_counting_free = threading.Lock()


def counts_inline(prompt: str | Sequence[ModelMessage]) -> bool:
    if isinstance(prompt, str):
        return len(prompt) <= INLINE_COUNT_CHARS
    if len(prompt) > INLINE_COUNT_MESSAGES:
        return False
    return sum(message.char_count for message in prompt) <= INLINE_COUNT_CHARS


@contextmanager
def counting_executor(pool: Executor) -> Iterator[Executor]:
    """The counting thread while no other count holds it, else `pool`. Hold it until the count
    submitted to it has ended or will never start."""
    if not _counting_free.acquire(blocking=False):
        yield pool
        return
    try:
        yield _counting
    finally:
        _counting_free.release()


def on_counting_thread(work: Callable[[], T]) -> T:
    """`work()` run on the counting thread, waited for (in place when called from it)."""
    if getattr(_on_thread, "counting", False):
        return work()
    return _counting.submit(work).result()
