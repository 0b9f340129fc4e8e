"""What a call costs: its usage times its model's prices, in whole nano-units of the currency, so
counters add exactly (integers) in the store and in this process alike."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from modelwire.core.settings import Prices
from modelwire.core.types import Usage

# Money is counted in billionths of the currency: a budget of 1,000,000 is 10^15 of them, within
# what a Redis script's numbers (doubles) hold exactly (2^53).
NANO_PER_UNIT = 1_000_000_000
# Prices are held in millionths of the currency per million tokens (configured prices have at
# most six decimals): a token then costs price/1000 nano-units, exactly, in integers.
_MICRO = 1_000_000


def _micro(price: float) -> int:
    """A configured price as written (2.5 is 2.5, not the nearest double), in millionths."""
    return int(Decimal(repr(price)) * _MICRO)


@dataclass(frozen=True, slots=True)
class Tariff:
    """A model's prices as integers (millionths per million tokens), read once from its
    configuration: a call's cost is then integer arithmetic. Unset cache prices are input's."""

    input: int
    cached_input: int
    cache_write: int
    output: int

    @classmethod
    def of(cls, prices: Prices | None) -> Tariff | None:
        if prices is None:
            return None
        input_price = _micro(prices.input)
        return cls(
            input_price,
            input_price if prices.cached_input is None else _micro(prices.cached_input),
            input_price if prices.cache_write is None else _micro(prices.cache_write),
            _micro(prices.output),
        )

    def cost_nano(self, usage: Usage) -> int:
        """`usage` at these prices, rounded once (half up) to a nano-unit. Cached and cache-write
        tokens are parts of the prompt."""
        cached = min(usage.cached_prompt_tokens, usage.prompt_tokens)
        written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
        fresh = usage.prompt_tokens - cached - written
        micro_tokens = (
            fresh * self.input
            + cached * self.cached_input
            + written * self.cache_write
            + usage.completion_tokens * self.output
        )
        # millionths × tokens / million tokens = millionths of a unit per … → nano: ÷ 1000.
        return (micro_tokens + 500) // 1000

    def most_cost_nano(self, prompt_tokens: int, output_tokens: int) -> int:
        """The most `prompt_tokens` and `output_tokens` may cost: the prompt at its dearest price
        (a cache write costs more than input at Anthropic)."""
        dearest = max(self.input, self.cached_input, self.cache_write)
        return (prompt_tokens * dearest + output_tokens * self.output + 500) // 1000


def cost_nano(usage: Usage, tariff: Tariff | None) -> int:
    return tariff.cost_nano(usage) if tariff is not None else 0


def in_units(nano: int) -> float:
    return nano / NANO_PER_UNIT
