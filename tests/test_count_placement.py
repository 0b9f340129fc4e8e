"""Where a count runs: in place when short, else on the counting thread, or on the pool while
another count holds that thread."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from modelwire.core.types import ModelMessage, Role
from modelwire.tokenize import placement


def test_short_prompts_count_in_place_and_long_ones_do_not() -> None:
    assert placement.counts_inline("x" * placement.INLINE_COUNT_CHARS)
    assert not placement.counts_inline("x" * (placement.INLINE_COUNT_CHARS + 1))
    few = [ModelMessage(Role.USER, "hi")] * placement.INLINE_COUNT_MESSAGES
    assert placement.counts_inline(few)
    assert not placement.counts_inline([*few, ModelMessage(Role.USER, "hi")])


def test_a_long_count_takes_the_counting_thread_and_the_next_one_the_pool() -> None:
    pool = ThreadPoolExecutor(1, thread_name_prefix="pool")
    name = threading.current_thread
    with placement.counting_executor(pool) as first:
        with placement.counting_executor(pool) as second:
            assert second is pool
            assert second.submit(lambda: name().name).result().startswith("pool")
        assert first.submit(lambda: name().name).result().startswith("modelwire-count")
    with placement.counting_executor(pool) as again:
        assert again is not pool
    pool.shutdown()


def test_work_for_the_counting_thread_runs_in_place_when_already_on_it() -> None:
    def nested() -> str:
        return placement.on_counting_thread(lambda: threading.current_thread().name)

    assert placement.on_counting_thread(nested).startswith("modelwire-count")
