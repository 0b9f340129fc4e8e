"""ORCA per-call load reports: every ModelWorker call that passes its token check carries
`xds.data.orca.v3.OrcaLoadReport` in the `endpoint-load-metrics-bin` trailer, so gRPC clients
using `weighted_round_robin` (Go, Java, C++) balance on the worker's real load. Python gRPC has no
ORCA API; the call pipeline writes the trailer.

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
from collections.abc import Callable, Mapping
from typing import Any

from xds.data.orca.v3 import orca_load_report_pb2

from modelwire.rpc.wire import (
    INSTANCE_TRAILER,
    LOAD_TRAILER,
    ORCA_TRAILER,
    WORKER_SERVICE,
    Metadata,
)
from modelwire.worker.deployments import Target

WORKER_PREFIX = f"/{WORKER_SERVICE}/"
RATE_WINDOW_S = 10
CPU_SAMPLE_S = 1.0


class _Rate:
    """Calls per second over the last RATE_WINDOW_S seconds, in one-second buckets; their sum is
    kept as they change, so a report reads it at once."""

    def __init__(self) -> None:
        self._buckets = [0] * RATE_WINDOW_S
        self._second = int(time.monotonic())
        self._total = 0

    def _advance(self) -> None:
        now = int(time.monotonic())
        if now <= self._second:
            return
        for second in range(max(self._second + 1, now - RATE_WINDOW_S + 1), now + 1):
            index = second % RATE_WINDOW_S
            self._total -= self._buckets[index]
            self._buckets[index] = 0
        self._second = now

    def add(self) -> None:
        self._advance()
        self._buckets[self._second % RATE_WINDOW_S] += 1
        self._total += 1

    def per_second(self) -> float:
        self._advance()
        return self._total / RATE_WINDOW_S


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


class LoadReports:
    """The ORCA trailers of the worker's calls: the call pipeline (rpc/call_pipeline.py) counts a
    call when it starts and sets its report once it has answered; a call that fails gets its
    report with its status (rpc/status.py CallScope), made then."""

    def __init__(
        self, targets: Mapping[str, Target], instance_id: Callable[[], str | None] = lambda: None
    ) -> None:
        """`targets`: each name callers use, its load that of every deployment it may call."""
        self._targets = {
            name: tuple(served.admission for served in target.deployments)
            for name, target in targets.items()
        }
        self._all = tuple(
            {
                id(served): served.admission
                for target in targets.values()
                for served in target.deployments
            }.values()
        )
        self._instance_id = instance_id
        self._rate = _Rate()
        self._cpu = _Cpu()

    def report(self, model: str) -> orca_load_report_pb2.OrcaLoadReport:
        admissions = self._targets.get(model, self._all)
        if len(admissions) == 1:  # a model with one deployment: no sums
            only = admissions[0]
            in_flight, queued, capacity = only.in_flight, only.queued, only.max_concurrency
        else:
            in_flight = sum(admission.in_flight for admission in admissions)
            queued = sum(admission.queued for admission in admissions)
            capacity = sum(admission.max_concurrency for admission in admissions)
        report = orca_load_report_pb2.OrcaLoadReport(
            cpu_utilization=self._cpu.sample(),
            rps_fractional=self._rate.per_second(),
            application_utilization=in_flight / capacity if capacity else 0.0,
        )
        named = report.named_metrics
        named["in_flight"] = in_flight
        named["queued"] = queued
        named["capacity"] = capacity
        return report

    def applies(self, method: str) -> bool:
        return method.startswith(WORKER_PREFIX)

    def started(self, request: Any) -> None:
        self._rate.add()

    def trailers(self, request: Any) -> Metadata:
        report = self.report(getattr(request, "model", "")).SerializeToString()
        instance_id = self._instance_id()
        if instance_id:
            return ((ORCA_TRAILER, report), (LOAD_TRAILER, report), (INSTANCE_TRAILER, instance_id))
        return ((ORCA_TRAILER, report), (LOAD_TRAILER, report))
