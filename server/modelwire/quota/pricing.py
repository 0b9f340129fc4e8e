"""What a call costs: its usage times its model's prices, in whole nano-units of the currency, so
counters add exactly (integers) in the store and in this process alike."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from modelwire.core.settings import Prices
from modelwire.core.types import Usage

# Money is counted in billionths of the currency: a budget of 1,000,000 is 10^15 of them, within
# what a Redis script's numbers (doubles) hold exactly (2^53).
NANO_PER_UNIT = 1_000_000_000
_PER_MILLION = Decimal(1_000_000)


def cost_nano(usage: Usage, prices: Prices | None) -> int:
    """`usage` at `prices` (per million tokens), rounded once to a nano-unit. Cached and cache-write
    tokens are parts of the prompt; unpriced, they cost what input costs."""
    if prices is None:
        return 0
    cached = min(usage.cached_prompt_tokens, usage.prompt_tokens)
    written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
    fresh = usage.prompt_tokens - cached - written
    total = (
        fresh * _price(prices.input)
        + cached * _price(prices.cached_input, prices.input)
        + written * _price(prices.cache_write, prices.input)
        + usage.completion_tokens * _price(prices.output)
    )
    return int((total * NANO_PER_UNIT / _PER_MILLION).to_integral_value(ROUND_HALF_UP))


def _price(price: float | None, default: float = 0.0) -> Decimal:
    """A configured price as written (2.5 is 2.5, not the nearest double)."""
    return Decimal(repr(price if price is not None else default))


def in_units(nano: int) -> float:
    return nano / NANO_PER_UNIT
