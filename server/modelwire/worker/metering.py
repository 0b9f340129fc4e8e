"""What a call used, as it is charged: the provider's usage when it reported one, else what the
worker saw (docs/configuration.md#quota, "Reserve, then settle"). One meter per generation or
embedding, fed the outputs the provider gave and closed once however the call ended."""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

from modelwire.core.dispatch import watch_dispatch
from modelwire.core.errors import DeadlineExceeded
from modelwire.core.types import ModelOutput, Usage
from modelwire.observe.call_record import note_charge
from modelwire.quota.limiter import Reservation
from modelwire.quota.pricing import Tariff, cost_nano, in_units

# Characters per token when only text is known (a cancelled stream's delivered deltas): about what
# cl100k and gemma's tokenizers give for English.
CHARS_PER_TOKEN = 4
# How a call ends when it is cut off rather than failed: the caller left, or time ran out.
_CUT_OFF = (asyncio.CancelledError, GeneratorExit, TimeoutError, DeadlineExceeded)


class CallMeter:
    """Also a context manager around the provider's work: closed however the block ends."""

    def __init__(
        self,
        model: str,
        reservation: Reservation | None,
        tariff: Tariff | None,
        prompt_tokens: int,
        output_bound: int,
        streaming: bool,
        signals_dispatch: bool,
    ) -> None:
        """`model`: the model that runs the call (a route's member);
        `prompt_tokens`: the prompt as the worker counted it; `output_bound`: the most output
        the provider was asked for (what a unary call that was cut off is charged);
        `signals_dispatch`: the provider says when its upstream has the request
        (core/dispatch.py), else the request is with the provider as soon as the call starts."""
        self._model = model
        self._reservation = reservation
        self._tariff = tariff
        self._prompt = prompt_tokens
        self._output_bound = output_bound
        self._streaming = streaming
        self._signals_dispatch = signals_dispatch
        # The call passed its quota and told the edge it began; its request reached the provider.
        self.started = False
        self._reached = False
        self._chunks = 0
        self._chars = 0
        self._usage: Usage | None = None

    def start(self) -> None:
        """The call's work begins: its provider is called next."""
        self.started = True
        if self._signals_dispatch:
            watch_dispatch(self._dispatched)
        else:
            self._reached = True

    def _dispatched(self) -> None:
        self._reached = True

    def saw(self, output: ModelOutput) -> None:
        """An output the provider gave (a whole answer or a delta), before any check of it: the
        provider charged for it whether or not the caller gets it."""
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
        self._reached = True
        if usage.total_tokens:
            self._usage = usage

    def used(self, error: BaseException | None) -> Usage:
        """The call's usage: the provider's own when it reported one; nothing when the request
        never reached the provider, or when it failed before any output (providers bill no
        refused request); a unary call cut off (cancelled, out of time) the prompt and its whole
        output bound, since what it generated cannot be seen and the provider may have generated
        all of it; otherwise the counted prompt and the output the provider gave."""
        if self._usage is not None:
            return self._usage
        if not self._reached and self._chunks == 0:
            return Usage()
        cut = isinstance(error, _CUT_OFF)
        if error is not None and not cut and self._chunks == 0:
            return Usage()
        if cut and not self._streaming and self._chunks == 0:
            return Usage(self._prompt, self._output_bound, estimated=True)
        delivered = max(self._chunks, math.ceil(self._chars / CHARS_PER_TOKEN))
        return Usage(self._prompt, delivered, estimated=True)

    def __enter__(self) -> CallMeter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(error)

    def close(self, error: BaseException | None) -> None:
        """Charges the call once: settles its reservation and puts usage and cost in its record.
        A call that never started costs nothing, not even its request."""
        usage = self.used(error) if self.started else Usage()
        if self._reservation is not None:
            cost = self._reservation.settle(usage, self.started)
        elif self._tariff is not None:
            cost = cost_nano(usage, self._tariff)
        else:
            return  # neither limited nor priced: the record keeps the tokens its response reports
        if self.started:
            note_charge(self._model, usage, in_units(cost))
