"""Assembles a worker from configuration and runs it until a signal, then drains it."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from grpc_health.v1 import health_pb2

from modelwire.app.config import Config
from modelwire.app.reload import Reloader
from modelwire.core.balance import pick_policy
from modelwire.core.errors import StartupFailure
from modelwire.core.settings import ANY_MODEL
from modelwire.core.types import ModelMetadata
from modelwire.facade.server import HttpFacade, check_http_exposure
from modelwire.observe.call_observer import UNKNOWN_MODEL, ModelLabel
from modelwire.observe.metrics import serve_metrics
from modelwire.providers.registry import provider_class
from modelwire.quota.limiter import Limiter
from modelwire.rpc.auth import worker_calls
from modelwire.rpc.server import RpcServer, Service, check_exposure, on_signals
from modelwire.rpc.wire import QUOTA_STORE_HEALTH, USAGE_SERVICE, WORKER_SERVICE, model_health
from modelwire.v1 import usage_pb2_grpc, worker_pb2_grpc
from modelwire.worker.admission import Admission
from modelwire.worker.agent import (
    RegistrationAgent,
    advertised_address,
    check_reachable,
    worker_agent,
)
from modelwire.worker.breaker import Breaker, BreakerState
from modelwire.worker.deployments import ServedModel, Target, build_targets
from modelwire.worker.orca import LoadReports
from modelwire.worker.service import WorkerService
from modelwire.worker.servicer import ModelWorkerServicer
from modelwire.worker.usage_servicer import UsageAdminServicer

logger = logging.getLogger(__name__)


async def load_models(config: Config, executor: ThreadPoolExecutor) -> list[ServedModel]:
    """Builds each model's client on the pool (loading a local model blocks for seconds) and warms
    it up, so a model that cannot generate stops the start before health says SERVING."""
    loop = asyncio.get_running_loop()
    served = []
    for model in config.models:
        cls = provider_class(model)
        client = await loop.run_in_executor(executor, cls.new_client, model, executor)
        logger.info("model %s: warming up", model.name)
        try:
            await client.warm_up()
        except Exception as error:
            raise StartupFailure(
                f"model {model.name!r} failed its warm-up generation: {error}"
            ) from error
        for metadata in client.models():
            served.append(
                ServedModel(
                    metadata,
                    client,
                    Admission(metadata.model, model.max_concurrency, model.max_queue),
                    model.estimate_margin,
                    model.deployment,
                    model.weight,
                    Breaker(config.failover.breaker),
                )
            )
    return served


def _model_label(targets: Mapping[str, Target]) -> Callable[[str], str]:
    """A model name as a metrics label: only the names served here (models and routes)."""
    served = set(targets)

    def label(model: str) -> str:
        return model if model in served else UNKNOWN_MODEL

    return label


def _request_model_label(targets: Mapping[str, Target]) -> ModelLabel:
    label = _model_label(targets)

    def of_request(request: Any) -> str:
        return label(getattr(request, "model", ""))

    return of_request


class _ServedModels:
    """The worker's models as the HTTP facade calls them (facade/calls.py ModelBackend)."""

    def __init__(self, service: WorkerService) -> None:
        self._service = service
        self.generate = service.generate
        self.generate_stream = service.generate_stream
        self.embed = service.embed
        self.count_token = service.count_token

    async def list_models(self) -> list[ModelMetadata]:
        return self._service.list_models()


class Worker:
    """A running gRPC worker: ModelWorker, UsageAdmin, health and reflection on one port
    (rpc/server.py)."""

    def __init__(
        self,
        config: Config,
        models: list[ServedModel],
        executor: ThreadPoolExecutor,
        limiter: Limiter | None = None,
    ) -> None:
        self.config = config
        self.models = models
        self._executor = executor
        # The tenants' limits and the models' prices ([quota], quota/limiter.py).
        self.limiter = limiter or Limiter(config.quota, config.prices())
        # Registers the worker with a controller or etcd (serve --controller/--registry); see
        # worker/agent.py.
        self.registration: RegistrationAgent | None = None
        self.targets = build_targets(models, config.routes, config.failover.attempt_timeout_s)
        self.service = WorkerService(
            models,
            config.limits,
            self.limiter,
            config.quota.default_output_reservation,
            self.targets,
            pick_policy(config.failover.policy),
        )
        self._health_updates: set[asyncio.Task[None]] = set()
        # Per deployment whose circuit is open: when its health is checked again.
        self._health_timers: dict[int, asyncio.TimerHandle] = {}
        servicer = ModelWorkerServicer(self.service)
        # What tenants have used: every tenant of the tokens (as reloaded) and of the rules.
        usage_servicer = UsageAdminServicer(
            self.limiter, lambda: self.rpc.auth.tenants() if self.rpc.auth is not None else ()
        )
        # Every ModelWorker response carries an ORCA load report (worker/orca.py).
        load_reports = LoadReports(
            self.targets, lambda: self.registration.instance_id if self.registration else None
        )
        self.rpc = RpcServer(
            role="worker",
            server=config.server,
            services=[
                Service(
                    WORKER_SERVICE,
                    lambda server: worker_pb2_grpc.add_ModelWorkerServicer_to_server(
                        servicer, server
                    ),
                ),
                Service(
                    USAGE_SERVICE,
                    lambda server: usage_pb2_grpc.add_UsageAdminServicer_to_server(
                        usage_servicer, server
                    ),
                ),
            ],
            # ModelWorker's methods need `generate`, UsageAdmin's `read_usage`.
            permission_of=worker_calls,
            tls=config.tls,
            auth=config.auth,
            observability=config.observability,
            model_label=_request_model_label(self.targets),
            trailers=load_reports,
            # Several processes share one port only on purpose; otherwise a second worker on a busy
            # port must fail instead of silently splitting its traffic.
            options=[("grpc.so_reuseport", 1 if config.server.processes > 1 else 0)],
        )
        self.metrics = self.rpc.metrics
        if self.rpc.auth is not None:
            self.rpc.auth.name_tenants(self.limiter.tenants())
        self.limiter.on_store_change = self._store_changed
        for served in models:
            # A model's gauges count every deployment of it; one deployment's are its own.
            shared = len(self.targets[served.model].deployments) > 1
            served.admission.observer = (
                self._admission_changed if shared else self.metrics.admission_changed
            )
            self.metrics.admission_changed(
                served.metadata.model, 0, 0
            )  # the gauges exist from the start
            served.breaker.observer = partial(self._breaker_changed, served)
            self.metrics.breaker_changed(served.model, served.label, served.breaker.state)
        self.service.on_attempt = self.metrics.attempt_ended
        self.port = self.rpc.port
        # OpenAI's and Anthropic's HTTP APIs on their own port, when [http] port is set.
        self.facade = (
            HttpFacade(
                role="worker",
                http=config.http,
                server=config.server,
                backend=_ServedModels(self.service),
                metrics=self.metrics,
                sampling=self.rpc.sampling,
                auth=self.rpc.auth,
                auth_config=config.auth,
                tls=config.tls,
                model_label=_model_label(self.targets),
                limits=config.limits,
                reuse_port=config.server.processes > 1,
            )
            if config.http.port is not None
            else None
        )
        if self.facade is not None and self.rpc.tls is not None:
            self.rpc.tls.followers.append(self.facade.reload_tls)

    @property
    def address(self) -> str:
        return self.rpc.address

    def _store_changed(self, available: bool) -> None:
        """The shared quota store went away or came back: in metrics, and in health under its own
        service name (QUOTA_STORE_HEALTH), which balancers watching the model service ignore."""
        self.metrics.quota_store_changed(available)
        self._set_health(QUOTA_STORE_HEALTH, available)

    def _admission_changed(self, model: str, _in_flight: int, _queued: int) -> None:
        """The gauges of a model with several deployments: theirs added up."""
        deployments = self.targets[model].deployments
        self.metrics.admission_changed(
            model,
            sum(served.admission.in_flight for served in deployments),
            sum(served.admission.queued for served in deployments),
        )

    def _breaker_changed(self, served: ServedModel, state: BreakerState) -> None:
        """A deployment's circuit opened or closed: in metrics, and in health under each name
        that may call it (rpc/wire.model_health): NOT_SERVING while every deployment of that
        name is open."""
        self.metrics.breaker_changed(served.model, served.label, state)
        self._breaker_health(served)

    def _breaker_health(self, served: ServedModel) -> None:
        """Health of every name that may call `served`; while its circuit is open, checked again
        when it will let a probe through (a balancer that follows this health would otherwise
        never send the call that probes)."""
        for name, target in self.targets.items():
            if served in target.deployments:
                self._set_health(model_health(name), _serving(target))
        wait = served.breaker.retry_after_s()
        timer = self._health_timers.pop(id(served), None)
        if timer is not None:
            timer.cancel()
        if wait > 0:
            self._health_timers[id(served)] = asyncio.get_running_loop().call_later(
                wait, self._breaker_health, served
            )

    def _set_health(self, service: str, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        task = asyncio.get_running_loop().create_task(self.rpc.health.set(service, status))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    def reload_quota(self, config: Config) -> list[str]:
        """SIGHUP: the quota rules, the default output reservation and the prices, when they
        changed (app/reload.py); returns what it reloaded."""
        reloaded = []
        if (config.quota.rules, config.quota.default_output_reservation) != (
            self.limiter.rules,
            self.service.default_output_reservation,
        ):
            reloaded.append("quota")
        if config.prices() != self.limiter.all_prices():
            reloaded.append("prices")
        if reloaded:
            _warn_unserved_rules(config, self.models)
            self.limiter.replace(config.quota, config.prices())
            self.service.default_output_reservation = config.quota.default_output_reservation
            if self.rpc.auth is not None:
                self.rpc.auth.name_tenants(self.limiter.tenants())
        return reloaded

    async def start(self) -> None:
        await self.rpc.start()
        for name, target in self.targets.items():
            self._set_health(model_health(name), _serving(target))
        if self.facade is not None:
            await self.facade.start()
        if self.limiter.shared:
            self._store_changed(self.limiter.available)
        if self.registration is not None:
            await self.registration.start()

    async def drain(self) -> None:
        """NOT_SERVING and out of the registry first, so balancers stop sending; then the grace
        period."""
        for timer in self._health_timers.values():
            timer.cancel()
        leave = self.registration.stop if self.registration is not None else None
        if self.facade is None:
            await self.rpc.drain(leave)
        else:  # both doors at once: each lets its calls in flight finish within the grace period
            await asyncio.gather(self.rpc.drain(leave), self.facade.stop())
        # Stopping the server cancelled the calls left, which tells their threads to stop: wait for
        # them before the clients free what those threads use (a llama.cpp context mid-decode).
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        for served in {id(m.client): m.client for m in self.models}.values():
            await served.close()
        # The calls' settles under way reach the store before the process ends.
        await self.limiter.close()


async def build_worker(config: Config) -> Worker:
    # Before minutes of model loading, not after.
    check_exposure("worker", config.server, config.auth)
    if config.http.port is not None:
        check_http_exposure("worker", config.http, config.server, config.auth)
    if config.registry.enabled:
        server, registration = config.server, config.registration
        check_reachable(
            advertised_address(server.host, server.port, registration.advertise),
            config.registry,
            registration,
        )
    # The quota store, before minutes of model loading too.
    limiter = Limiter(config.quota, config.prices())
    await limiter.start()
    executor = ThreadPoolExecutor(
        max_workers=config.blocking_pool_size(), thread_name_prefix="modelwire-blocking"
    )
    try:
        models = await load_models(config, executor)
    except BaseException:
        await limiter.close()
        raise
    _warn_unserved_rules(config, models)
    return Worker(config, models, executor, limiter)


def _serving(target: Target) -> bool:
    """Some deployment's circuit is closed, or lets a probe through."""
    return any(served.breaker.retry_after_s() == 0 for served in target.deployments)


def _warn_unserved_rules(config: Config, models: list[ServedModel]) -> None:
    """A rule naming a model no worker here serves never applies here: a typo, or a rule for
    another worker of the fleet sharing this file. Said at start and at each reload."""
    served = {m.metadata.model for m in models}
    routes = {route.name for route in config.routes}
    for index, rule in enumerate(config.quota.rules):
        if rule.model in routes:
            logger.warning(
                "quota.rules[%d]: %r is a route: a call is counted against the model that runs "
                "it (each of the route's attempts its member's); name the members instead",
                index,
                rule.model,
            )
        elif rule.model != ANY_MODEL and rule.model not in served:
            logger.warning(
                "quota.rules[%d]: model %r is not served by this worker; the rule applies to "
                "none of its calls",
                index,
                rule.model,
            )


def _watch_lifeline(stop: asyncio.Event) -> None:
    """Sets `stop` when stdin reaches its end: the parent holding its other end has exited."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()

    def readable() -> None:
        if not os.read(fd, 4096):
            loop.remove_reader(fd)
            logger.warning("the supervising process is gone: draining")
            stop.set()

    loop.add_reader(fd, readable)


async def serve(
    config: Config,
    on_ready: Callable[[Worker], None] | None = None,
    serve_metrics_here: bool = True,
    lifeline: bool = False,
    reload_config: Callable[[], Config] | None = None,
) -> None:
    """Runs until SIGTERM or SIGINT (or, with `lifeline`, until stdin closes: the supervising
    parent is gone), then drains within the configured grace period. SIGHUP reloads the tokens and
    certificates from `reload_config()` (app/reload.py)."""
    worker = await build_worker(config)
    if config.registry.enabled:
        worker.registration = worker_agent(
            config.registry, config.registration, worker.targets, config.server.host, worker.port
        )
    observability = config.observability
    if serve_metrics_here and observability.metrics_port is not None:
        try:
            bound = serve_metrics(
                worker.metrics, observability.metrics_host, observability.metrics_port
            )
        except OSError as error:
            raise StartupFailure(
                "observability.metrics_port: cannot listen on "
                f"{observability.metrics_host}:{observability.metrics_port}: {error.strerror}"
            ) from None
        logger.info("metrics on http://%s:%d/metrics", observability.metrics_host, bound)
    await worker.start()
    stop = asyncio.Event()
    reload: Reloader[Config] | None = None
    if reload_config is not None:
        reload = Reloader(
            "worker",
            worker.rpc,
            config,
            reload_config,
            lambda new: new.auth,
            worker.reload_quota,
        )
    on_signals(stop, reload)
    if lifeline:
        _watch_lifeline(stop)
    logger.info(
        "serving %s on %s%s",
        ", ".join(worker.targets),
        worker.address,
        f" and {worker.facade.address}" if worker.facade is not None else "",
    )
    if on_ready is not None:
        on_ready(worker)
    await stop.wait()
    logger.info("draining: grace period %.1fs", config.server.grace_period_s)
    await worker.drain()
    logger.info("stopped")
