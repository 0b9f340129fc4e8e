"""Where a count runs: short inputs in place on the event loop, long ones on the thread pool.

Counting a short prompt takes microseconds and the hop to the pool costs more (measured: 570 µs
of CPU per call, bench/ablation.py); a long prompt, or very many short messages, would stall
every other call on the loop. The service takes an admission slot for exactly the long ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelwire.core.types import ModelMessage

INLINE_COUNT_CHARS = 4096
INLINE_COUNT_MESSAGES = 64


def counts_inline(prompt: str | Sequence[ModelMessage]) -> bool:
    if isinstance(prompt, str):
        return len(prompt) <= INLINE_COUNT_CHARS
    if len(prompt) > INLINE_COUNT_MESSAGES:
        return False
    return sum(message.char_count for message in prompt) <= INLINE_COUNT_CHARS
