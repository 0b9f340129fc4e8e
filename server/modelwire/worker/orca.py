"""ORCA per-call load reports: every ModelWorker response carries `xds.data.orca.v3.OrcaLoadReport` in
the `endpoint-load-metrics-bin` trailer, so gRPC clients using `weighted_round_robin` (Go, Java, C++)
balance on the worker's real load. Python gRPC has no ORCA API; this interceptor writes the trailer.

Per call, for the model of the call:
- `application_utilization` = in-flight / capacity (the model's admission limit), after the call;
- `cpu_utilization` = this process's CPU time over the last second, as a fraction of the machine;
- `rps_fractional` = calls started per second over the last ten seconds;
- `named_metrics`: `in_flight`, `queued`, `capacity` of the model (the gateway reads these).
The worker's instance id, when it is registered, goes in the `modelwire-instance-id` trailer.

gRPC's C core (under Python, Ruby, PHP, C++) parses `endpoint-load-metrics-bin` for its own load
balancers and does not hand it to the application, so a Python caller never sees it. The same report
is therefore also sent as `modelwire-load-bin`, which the modelwire gateway reads.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from xds.data.orca.v3 import orca_load_report_pb2

from modelwire.observe.handlers import RewrappingInterceptor, StreamBehavior, UnaryBehavior, responses, rewrap
from modelwire.fleet.orca import INSTANCE_TRAILER, LOAD_TRAILER, ORCA_TRAILER
from modelwire.worker.service import ServedModel

WORKER_PREFIX = "/modelwire.v1.ModelWorker/"
RATE_WINDOW_S = 10
CPU_SAMPLE_S = 1.0

Metadata = tuple[tuple[str, str | bytes], ...]


class _Rate:
    """Calls per second over the last RATE_WINDOW_S seconds, in one-second buckets."""

    def __init__(self) -> None:
        self._buckets = [0] * RATE_WINDOW_S
        self._second = int(time.monotonic())

    def _advance(self) -> None:
        now = int(time.monotonic())
        for second in range(max(self._second + 1, now - RATE_WINDOW_S + 1), now + 1):
            self._buckets[second % RATE_WINDOW_S] = 0
        self._second = max(self._second, now)

    def add(self) -> None:
        self._advance()
        self._buckets[self._second % RATE_WINDOW_S] += 1

    def per_second(self) -> float:
        self._advance()
        return sum(self._buckets) / RATE_WINDOW_S


class _Cpu:
    """This process's share of the machine's CPU, sampled at most once a second."""

    def __init__(self) -> None:
        self._cores = os.cpu_count() or 1
        self._at = time.monotonic()
        self._used = self._cpu()
        self.value = 0.0

    @staticmethod
    def _cpu() -> float:
        times = os.times()
        return times.user + times.system

    def sample(self) -> float:
        now = time.monotonic()
        if now - self._at >= CPU_SAMPLE_S:
            used = self._cpu()
            self.value = min(1.0, max(0.0, (used - self._used) / ((now - self._at) * self._cores)))
            self._at, self._used = now, used
        return self.value


class OrcaInterceptor(RewrappingInterceptor):
    def __init__(self, models: Sequence[ServedModel], instance_id: Callable[[], str | None] = lambda: None) -> None:
        self._models = {m.metadata.model: m for m in models}
        self._instance_id = instance_id
        self._rate = _Rate()
        self._cpu = _Cpu()
        super().__init__(lambda method, handler: rewrap(handler, unary=self._unary, server_stream=self._stream))

    def report(self, model: str) -> orca_load_report_pb2.OrcaLoadReport:
        report = orca_load_report_pb2.OrcaLoadReport(
            cpu_utilization=self._cpu.sample(), rps_fractional=self._rate.per_second()
        )
        served = [self._models[model]] if model in self._models else list(self._models.values())
        in_flight = sum(m.admission.in_flight for m in served)
        queued = sum(m.admission.queued for m in served)
        capacity = sum(m.admission.max_concurrency for m in served)
        report.application_utilization = in_flight / capacity if capacity else 0.0
        report.named_metrics["in_flight"] = in_flight
        report.named_metrics["queued"] = queued
        report.named_metrics["capacity"] = capacity
        return report

    def trailers(self, model: str, context: grpc.aio.ServicerContext) -> Metadata:
        ours_keys = (ORCA_TRAILER, LOAD_TRAILER, INSTANCE_TRAILER)
        kept = tuple((k, v) for k, v in (context.trailing_metadata() or ()) if k not in ours_keys)
        report = self.report(model).SerializeToString()
        ours: list[tuple[str, str | bytes]] = [(ORCA_TRAILER, report), (LOAD_TRAILER, report)]
        instance_id = self._instance_id()
        if instance_id:
            ours.append((INSTANCE_TRAILER, instance_id))
        return kept + tuple(ours)

    def applies(self, method: str) -> bool:
        return method.startswith(WORKER_PREFIX)

    def _unary(self, behavior: UnaryBehavior) -> UnaryBehavior:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            model = getattr(request, "model", "")
            self._rate.add()
            # Set first so that an error without details still carries a report; refreshed at the end.
            context.set_trailing_metadata(self.trailers(model, context))
            response = await behavior(request, context)
            context.set_trailing_metadata(self.trailers(model, context))
            return response

        return wrapped

    def _stream(self, behavior: StreamBehavior) -> StreamBehavior:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            model = getattr(request, "model", "")
            self._rate.add()
            context.set_trailing_metadata(self.trailers(model, context))
            async for chunk in responses(behavior(request, context)):
                yield chunk
            context.set_trailing_metadata(self.trailers(model, context))

        return wrapped
