"""What the call pipeline (rpc/call_pipeline.py) records of every call: request id, status,
timing, tokens; then one log line and the metrics (the pipeline reads and writes the metadata).
A part of the one interceptor, not an interceptor of its own: each interceptor layer costs every
call an await and every streamed message a generator hop (docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import grpc

from modelwire.observe.call_record import CallRecord, begin_call
from modelwire.observe.guard import never_fails
from modelwire.observe.logs import AccessSampling, log_call
from modelwire.observe.metrics import WorkerMetrics
from modelwire.v1 import worker_pb2 as pb

PID = str(os.getpid())
# The metrics label of a call's model, from its request: only names the process knows (its served
# models, its fleet's) become labels, so a client sending random names cannot grow the label set.
ModelLabel = Callable[[Any], str]
UNKNOWN_MODEL = "_unknown"
# Watches held open for as long as their watcher runs (a gateway's or a controller's health Watch on
# a worker, a gateway's WatchInstances at a controller) end CANCELLED whenever the watcher restarts
# or leaves, and when this server stops: their normal end, not a failed call.
SUBSCRIPTIONS = frozenset(
    {"/grpc.health.v1.Health/Watch", "/modelwire.v1.ModelController/WatchInstances"}
)


def _ended_code(error: BaseException, context: grpc.aio.ServicerContext) -> str:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return "DEADLINE_EXCEEDED"
    if isinstance(error, (GeneratorExit, asyncio.CancelledError)):
        return "CANCELLED"
    if isinstance(error, grpc.aio.AbortError):
        code = context.code()
        return (
            code.name
            if isinstance(code, grpc.StatusCode)
            else grpc.StatusCode(code).name
            if code
            else "UNKNOWN"
        )
    return "UNKNOWN"


class CallObserver:
    def __init__(
        self,
        metrics: WorkerMetrics | None,
        model_label: ModelLabel,
        sampling: AccessSampling | None = None,
    ) -> None:
        """`sampling`: which calls' access lines are written (None: every call's)."""
        self._metrics = metrics
        self._model_label = model_label
        self._sampling = sampling or AccessSampling()

    def begin(self, method: str, request: Any, request_id: str | None) -> CallRecord:
        """The call's record, under the caller's request id when it sent one."""
        record = begin_call(method, request_id)
        record.model = self._model_label(request)
        return record

    def streamed(self, record: CallRecord, message: Any) -> None:
        now = time.perf_counter()
        last = record.last_chunk_at
        if record.first_chunk_at is None:
            record.first_chunk_at = now
        elif self._metrics is not None and last is not None:
            never_fails("the call metrics", self._metrics.inter_token_gap, record.model, now - last)
        record.last_chunk_at = now
        record.chunks += 1
        _count_usage(record, message)

    def answered(self, record: CallRecord, response: Any) -> None:
        _count_usage(record, response)

    def failed(
        self, record: CallRecord, error: BaseException, context: grpc.aio.ServicerContext
    ) -> None:
        record.code = _ended_code(error, context)

    def finished(self, record: CallRecord, streamed: bool) -> None:
        """However the call ended: counted once, and logged once unless sampling leaves out a
        successful fast call's line; a watch's normal end only at DEBUG."""
        if record.code == "CANCELLED" and record.method in SUBSCRIPTIONS:
            never_fails("the call log", log_call, record, logging.DEBUG)
            return
        verdict = self._sampling.verdict(record)
        if verdict is not None:
            sampled = verdict if verdict < 1.0 else None
            never_fails("the call log", log_call, record, logging.INFO, sampled)
        if self._metrics is not None:
            never_fails("the call metrics", self._metrics.finished, record, streamed)


def _count_usage(record: CallRecord, response: Any) -> None:
    """The tokens a response reports; a worker's charge (call_record.note_charge) takes their
    place when it has one."""
    if record.cost is not None:
        return
    if isinstance(response, (pb.ModelOutput, pb.EmbedResponse)) and response.HasField("usage"):
        record.prompt_tokens = response.usage.prompt_tokens
        record.completion_tokens = response.usage.completion_tokens
