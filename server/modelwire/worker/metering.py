"""What a call used, as it is charged: the provider's usage when it reported one, else what the
worker saw (docs/configuration.md#what-a-call-is-charged). One meter per generation or embedding,
fed the outputs that reached the caller and closed once however the call ended."""

from __future__ import annotations

import asyncio
import math

from modelwire.core.errors import DeadlineExceeded
from modelwire.core.settings import Prices
from modelwire.core.types import ModelOutput, Usage
from modelwire.observe.call_record import note_charge
from modelwire.quota.limiter import Reservation
from modelwire.quota.pricing import cost_nano, in_units

# Characters per token when only text is known (a cancelled stream's delivered deltas): about what
# cl100k and gemma's tokenizers give for English.
CHARS_PER_TOKEN = 4
# How a call ends when it is cut off rather than failed: the caller left, or time ran out.
_CUT_OFF = (asyncio.CancelledError, GeneratorExit, TimeoutError, DeadlineExceeded)


class CallMeter:
    def __init__(
        self,
        reservation: Reservation | None,
        prices: Prices | None,
        prompt_tokens: int,
        output_bound: int,
        streaming: bool,
    ) -> None:
        """`prompt_tokens`: the prompt as the worker counted it; `output_bound`: the most output
        the call could reach (what a unary call that was cut off is charged)."""
        self._reservation = reservation
        self._prices = prices
        self._prompt = prompt_tokens
        self._output_bound = output_bound
        self._streaming = streaming
        self.sent = False
        self._chunks = 0
        self._chars = 0
        self._usage: Usage | None = None

    def saw(self, output: ModelOutput) -> None:
        """An output (a whole answer or a delta) reached the caller."""
        if output.text or output.reasoning or output.tool_call_deltas or output.tool_calls:
            self._chunks += 1
            self._chars += len(output.text) + len(output.reasoning or "")
            for delta in output.tool_call_deltas:
                self._chars += len(delta.name) + len(delta.arguments_delta)
            for call in output.tool_calls:
                self._chars += len(call.name) + len(call.arguments_json)
        if output.usage is not None:
            self.reported(output.usage)

    def reported(self, usage: Usage) -> None:
        """The provider's usage (an embedding's, a stream's last message's)."""
        if usage.total_tokens:
            self._usage = usage

    def used(self, error: BaseException | None) -> Usage:
        """The call's usage: the provider's own when it reported one; nothing when it failed
        before any output (providers bill no refused request); a unary call cut off (cancelled,
        out of time) the prompt and its whole output bound, since what it generated cannot be
        seen and the provider may have generated all of it; otherwise the counted prompt and the
        output that reached the caller."""
        if self._usage is not None:
            return self._usage
        cut = isinstance(error, _CUT_OFF)
        if error is not None and not cut and self._chunks == 0:
            return Usage()
        if cut and not self._streaming:
            return Usage(self._prompt, self._output_bound, estimated=True)
        delivered = max(self._chunks, math.ceil(self._chars / CHARS_PER_TOKEN))
        return Usage(self._prompt, delivered, estimated=True)

    def close(self, error: BaseException | None) -> None:
        """Charges the call once: settles its reservation and puts usage and cost in its record."""
        usage = self.used(error) if self.sent else Usage()
        if self._reservation is not None:
            cost = self._reservation.settle(usage, self.sent)
        elif self._prices is not None:
            cost = cost_nano(usage, self._prices)
        else:
            return  # neither limited nor priced: the record keeps the tokens its response reports
        if self.sent:
            note_charge(usage, in_units(cost))
