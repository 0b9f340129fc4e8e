"""Retry with backoff, only for retryable failures and only before the first streamed token."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TypeVar

from modelwire.core import errors
from modelwire.core.backoff import backoff_delay
from modelwire.core.deadline import remaining_s
from modelwire.providers.http.errors import is_retryable

logger = logging.getLogger(__name__)

T = TypeVar("T")


# The longest the worker waits before one retry; an upstream asking for a longer Retry-After is
# answered at once with RESOURCE_EXHAUSTED and that delay, so the caller decides.
MAX_RETRY_WAIT_S = 8.0


# A retry is made only when at least this much of the caller's time is left after its wait.
MIN_ATTEMPT_S = 0.25


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, for rate limits (honouring Retry-After), 408/409/5xx and
    connection failures. Never for 4xx, auth, timeouts, or once a token has been streamed."""

    max_retries: int
    backoff_s: float
    max_wait_s: float = MAX_RETRY_WAIT_S

    def wait_before_retry(self, retries_done: int, error: errors.ModelwireError) -> float | None:
        """Seconds to wait before the next try, or None to give up and raise `error`: also when
        the wait and a short attempt after it do not fit in the caller's remaining time, so the
        caller gets the upstream's answer (a 429's RetryInfo) instead of a passed deadline."""
        if retries_done >= self.max_retries or not is_retryable(error):
            return None
        wait = backoff_delay(retries_done, self.backoff_s, self.max_wait_s)
        if isinstance(error, errors.Overloaded):
            if error.retry_after_s > self.max_wait_s:
                return None
            wait = max(error.retry_after_s, wait)
        remaining = remaining_s()
        if remaining is not None and wait + MIN_ATTEMPT_S > remaining:
            return None
        return wait


async def retrying_call(policy: RetryPolicy, model: str, attempt: Callable[[], Awaitable[T]]) -> T:
    retries = 0
    while True:
        try:
            return await attempt()
        except errors.ModelwireError as error:
            wait = policy.wait_before_retry(retries, error)
            if wait is None:
                raise
            _log_retry(model, error, retries, policy, wait)
        await asyncio.sleep(wait)
        retries += 1


async def retrying_stream(
    policy: RetryPolicy, model: str, attempt: Callable[[], AsyncGenerator[T, None]]
) -> AsyncIterator[T]:
    """Retries a stream only while it has yielded nothing: sent tokens are never repeated."""
    retries = 0
    while True:
        emitted = False
        try:
            async with aclosing(attempt()) as stream:
                async for item in stream:
                    emitted = True
                    yield item
            return
        except errors.ModelwireError as error:
            wait = None if emitted else policy.wait_before_retry(retries, error)
            if wait is None:
                raise
            _log_retry(model, error, retries, policy, wait)
        await asyncio.sleep(wait)
        retries += 1


def _log_retry(
    model: str, error: errors.ModelwireError, retries: int, policy: RetryPolicy, wait: float
) -> None:
    logger.warning(
        "model %s: upstream call failed (%s: %s); retry %d of %d in %.2fs",
        model,
        type(error).__name__,
        error,
        retries + 1,
        policy.max_retries,
        wait,
    )
