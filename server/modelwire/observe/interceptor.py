"""One interceptor that records every call: request id in and out, status, timing, tokens.

It wraps handler behaviors (see handlers.rewrap) so it sees the request, each streamed message and
how the call ended; it then writes one log line and updates the metrics.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from modelwire.observe.call_record import REQUEST_ID_KEY, CallRecord, begin_call
from modelwire.observe.guard import never_fails
from modelwire.observe.handlers import RewrappingInterceptor, StreamBehavior, UnaryBehavior, responses, rewrap
from modelwire.observe.logs import log_call
from modelwire.observe.metrics import WorkerMetrics
from modelwire.v1 import worker_pb2 as pb

PID_KEY = "modelwire-pid"
PID = str(os.getpid())
# The metrics label of a call's model, from its request: only names the process knows (its served
# models, its fleet's) become labels, so a client sending random names cannot grow the label set.
ModelLabel = Callable[[Any], str]
UNKNOWN_MODEL = "_unknown"


def _header(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return str(value)
    return None


def _ended_code(error: BaseException, context: grpc.aio.ServicerContext) -> str:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return "DEADLINE_EXCEEDED"
    if isinstance(error, (GeneratorExit, asyncio.CancelledError)):
        return "CANCELLED"
    if isinstance(error, grpc.aio.AbortError):
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else grpc.StatusCode(code).name if code else "UNKNOWN"
    return "UNKNOWN"


class CallObserver(RewrappingInterceptor):
    def __init__(self, metrics: WorkerMetrics | None, model_label: ModelLabel) -> None:
        self._metrics = metrics
        self._model_label = model_label
        super().__init__(
            lambda method, handler: rewrap(
                handler,
                unary=lambda behavior: self._unary(behavior, method),
                server_stream=lambda behavior: self._stream(behavior, method),
            )
        )

    def _begin(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> CallRecord:
        record = begin_call(method, _header(context, REQUEST_ID_KEY))
        record.model = self._model_label(request)
        context.set_trailing_metadata(((REQUEST_ID_KEY, record.request_id), (PID_KEY, PID)))
        return record

    @contextmanager
    def _observing(self, record: CallRecord, context: grpc.aio.ServicerContext, streamed: bool) -> Iterator[None]:
        """However the call ends, its record gets the status and is logged and counted once."""
        try:
            yield
        except BaseException as error:
            record.code = _ended_code(error, context)
            raise
        finally:
            never_fails("the call log", log_call, record)
            if self._metrics is not None:
                never_fails("the call metrics", self._metrics.finished, record, streamed)

    def _unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            record = self._begin(method, request, context)
            with self._observing(record, context, streamed=False):
                response = await behavior(request, context)
                _count_usage(record, response)
                return response

        return observed

    def _stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        metrics = self._metrics

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            record = self._begin(method, request, context)
            with self._observing(record, context, streamed=True):
                async for response in responses(behavior(request, context)):
                    now = time.perf_counter()
                    if record.first_chunk_at is None:
                        record.first_chunk_at = now
                    elif metrics is not None and record.last_chunk_at is not None:
                        never_fails("the call metrics", metrics.inter_token_gap, record.model, now - record.last_chunk_at)
                    record.last_chunk_at = now
                    record.chunks += 1
                    _count_usage(record, response)
                    yield response

        return observed


def _count_usage(record: CallRecord, response: Any) -> None:
    if isinstance(response, (pb.ModelOutput, pb.EmbedResponse)) and response.HasField("usage"):
        record.prompt_tokens = response.usage.prompt_tokens
        record.completion_tokens = response.usage.completion_tokens
