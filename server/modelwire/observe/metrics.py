"""Prometheus metrics, named by Prometheus conventions (`modelwire_…_seconds`, `_total`).

Each worker owns a registry, so several workers in one process (tests) never collide. With
`--processes N` the children write prometheus-client's multiprocess files (PROMETHEUS_MULTIPROC_DIR)
and the parent serves their aggregate; gauges then add up over the live processes.

The per-call counters carry a `tenant` label, bounded by configuration whatever callers send: the
tenants of this process's tokens, `_other` (a relayed tenant this process has no token of) and
`_none` (no one authenticated). The histograms and gauges do not: a label multiplies each bucket.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from modelwire.observe.call_record import CallRecord

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "modelwire_requests",
            "Calls by method, model, status code and tenant.",
            ["method", "model", "code", "tenant"],
            registry=r,
        )
        self.duration = Histogram(
            "modelwire_request_duration_seconds",
            "Latency of unary calls.",
            ["method", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "modelwire_time_to_first_token_seconds",
            "Time from call start to the first streamed text.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "modelwire_inter_token_latency_seconds",
            "Gap between consecutive streamed chunks.",
            ["model"],
            buckets=_TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "modelwire_prompt_tokens",
            "Prompt tokens of finished calls.",
            ["model", "tenant"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "modelwire_completion_tokens",
            "Generated tokens of finished calls.",
            ["model", "tenant"],
            registry=r,
        )
        self.cached_prompt_tokens = Counter(
            "modelwire_cached_prompt_tokens",
            "Prompt tokens read from the provider's prompt cache (a part of the prompt tokens).",
            ["model", "tenant"],
            registry=r,
        )
        self.cache_write_tokens = Counter(
            "modelwire_cache_write_tokens",
            "Prompt tokens written to the provider's prompt cache (a part of the prompt tokens).",
            ["model", "tenant"],
            registry=r,
        )
        self.reasoning_tokens = Counter(
            "modelwire_reasoning_tokens",
            "Completion tokens spent on reasoning (a part of the completion tokens).",
            ["model", "tenant"],
            registry=r,
        )
        self.cost = Counter(
            "modelwire_cost",
            "What calls were charged, in the currency of the models' prices ([quota]).",
            ["model", "tenant"],
            registry=r,
        )
        self.quota_store_up = Gauge(
            "modelwire_quota_store_up",
            "1 while the shared quota store answers, 0 while it cannot be reached.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.quota_store_failures = Counter(
            "modelwire_quota_store_failures",
            "Times the shared quota store became unreachable.",
            registry=r,
        )
        self.in_flight = Gauge(
            "modelwire_in_flight",
            "Calls running per model.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queued = Gauge(
            "modelwire_queued",
            "Calls waiting for a slot per model.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        # Labelled children looked up once: admission changes four times per call, a streamed
        # message observes a gap, a finished call updates a request counter, a latency histogram
        # and its token counters.
        self._admission_gauges: dict[str, _AdmissionGauges] = {}
        self._children: dict[tuple[object, ...], Counter | Histogram] = {}
        self._calls: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._tokens: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._gaps: dict[str, Any] = {}  # a streamed message's: looked up once per model
        self.attempts = Counter(
            "modelwire_attempts",
            "Attempts of calls with a choice of deployments or models, by how each ended "
            "(answered, or why the call moved on).",
            ["model", "deployment", "outcome"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "modelwire_breaker_state",
            "Each deployment's circuit: 0 closed, 1 half-open (one probe call), 2 open.",
            ["model", "deployment"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.errors = Counter(
            "modelwire_errors",
            "Failed calls by the error that failed them (upstream_* come from the provider).",
            ["model", "kind", "tenant"],
            registry=r,
        )

    def admission_changed(self, model: str, in_flight: int, queued: int) -> None:
        gauges = self._admission_gauges.get(model)
        if gauges is None:
            gauges = self._admission_gauges[model] = _AdmissionGauges(
                self.in_flight.labels(model), self.queued.labels(model)
            )
        gauges.update(in_flight, queued)

    def breaker_changed(self, model: str, deployment: str, state: int) -> None:
        self.breaker_state.labels(model, deployment).set(state)

    def attempt_ended(self, model: str, deployment: str, outcome: str) -> None:
        self._child(self.attempts, model, deployment, outcome).inc()

    def quota_store_changed(self, available: bool) -> None:
        self.quota_store_up.set(1 if available else 0)
        if not available:
            self.quota_store_failures.inc()

    def inter_token_gap(self, model: str, gap_s: float) -> None:
        histogram = self._gaps.get(model)
        if histogram is None:
            histogram = self._gaps[model] = self.inter_token.labels(model)
        histogram.observe(gap_s)

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once: the label sets are bounded (known models,
        methods, codes, error kinds, tenants), and each lookup takes a lock and builds a key."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def finished(self, record: CallRecord, streamed: bool) -> None:
        tenant = record.tenant_label
        key = (record.method, record.model, record.code, tenant)
        call = self._calls.get(key)
        if call is None:
            method = record.method.rsplit("/", 1)[-1]
            call = self._calls[key] = (
                self.requests.labels(method, record.model, record.code, tenant),
                self.duration.labels(method, record.model),
            )
        call[0].inc()
        if not streamed:
            call[1].observe(record.latency_s)
        if record.first_chunk_at is not None:
            self._child(self.time_to_first_token, record.model).observe(
                record.first_chunk_at - record.started
            )
        if record.cost is None:  # not charged here: the tokens its response reports
            if record.prompt_tokens or record.completion_tokens:
                model = record.answered_by or record.model
                counters = self._tokens.get((model, tenant))
                if counters is None:
                    counters = self._tokens[(model, tenant)] = (
                        self.prompt_tokens.labels(model, tenant),
                        self.completion_tokens.labels(model, tenant),
                    )
                counters[0].inc(record.prompt_tokens)
                counters[1].inc(record.completion_tokens)
        for model, usage, cost in record.charges:  # each model that ran, as it was charged
            self._child(self.cost, model, tenant).inc(cost)
            for counter, tokens in (
                (self.prompt_tokens, usage.prompt_tokens),
                (self.completion_tokens, usage.completion_tokens),
                (self.cached_prompt_tokens, usage.cached_prompt_tokens),
                (self.cache_write_tokens, usage.cache_write_tokens),
                (self.reasoning_tokens, usage.reasoning_tokens),
            ):
                if tokens:
                    self._child(counter, model, tenant).inc(tokens)
        if record.error_kind is not None:
            self._child(self.errors, record.model, record.error_kind, tenant).inc()


class _AdmissionGauges:
    """A model's in-flight and queued gauges, each set only when its value changes (a free slot
    taken and given back leaves the queue as it was)."""

    __slots__ = ("_in_flight", "_queued", "_values")

    def __init__(self, in_flight: Gauge, queued: Gauge) -> None:
        self._in_flight = in_flight
        self._queued = queued
        self._values: tuple[int, int] | None = None

    def update(self, in_flight: int, queued: int) -> None:
        values = self._values
        if values is None or values[0] != in_flight:
            self._in_flight.set(in_flight)
        if values is None or values[1] != queued:
            self._queued.set(queued)
        self._values = (in_flight, queued)


def serve_metrics(metrics: WorkerMetrics | None, host: str, port: int) -> int:
    """Starts the /metrics HTTP endpoint; in multiprocess mode it serves every child's aggregate."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        assert metrics is not None
        registry = metrics.registry
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound: int = server.server_port
    return bound
