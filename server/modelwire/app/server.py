"""Assembles a worker from configuration and runs it until a signal, then drains it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from modelwire.app.config import Config
from modelwire.core.settings import TlsConfig, WorkerServerConfig
from modelwire.core.errors import StartupFailure
from modelwire.rpc.channels import server_ping_options
from modelwire.worker.agent import RegistrationAgent, RegistrationSettings, worker_agent
from modelwire.worker.orca import OrcaInterceptor
from modelwire.observe import tracing
from modelwire.rpc.auth import BearerAuth
from modelwire.observe.interceptor import CallObserver
from modelwire.observe.metrics import WorkerMetrics, serve_metrics
from modelwire.proxy.registry import provider_class
from modelwire.v1 import worker_pb2, worker_pb2_grpc
from modelwire.worker.admission import Admission
from modelwire.worker.service import ServedModel, WorkerService
from modelwire.worker.servicer import ModelWorkerServicer

logger = logging.getLogger(__name__)

WORKER_SERVICE = worker_pb2.DESCRIPTOR.services_by_name["ModelWorker"].full_name


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
            raise StartupFailure(f"model {model.name!r} failed its warm-up generation: {error}") from error
        for metadata in client.models():
            served.append(ServedModel(metadata, client, Admission(metadata.model, model.max_concurrency, model.max_queue)))
    return served


def _server_options(server: WorkerServerConfig) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_receive_message_length", server.max_receive_message_bytes),
        ("grpc.keepalive_time_ms", int(server.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(server.keepalive_timeout_s * 1000)),
        # Several processes share one port only on purpose; otherwise a second worker on a busy
        # port must fail instead of silently splitting its traffic.
        ("grpc.so_reuseport", 1 if server.processes > 1 else 0),
        *server_ping_options(),
    ]
    if server.max_connection_age_s is not None:
        options += [
            ("grpc.max_connection_age_ms", int(server.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(server.max_connection_age_grace_s * 1000)),
        ]
    return options


def _interceptors(config: Config, metrics: WorkerMetrics) -> list[grpc.aio.ServerInterceptor]:
    """Outermost first: tracing sees everything, the observer logs refused calls too, auth is last."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if config.observability.tracing:
        interceptors.append(tracing.server_interceptor(config.observability.otlp_endpoint))
    interceptors.append(CallObserver(metrics))
    if config.auth is not None:
        interceptors.append(BearerAuth(config.auth))
    return interceptors


def _server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


class Worker:
    """A running gRPC worker: ModelWorker, health and reflection on one port."""

    def __init__(self, config: Config, models: list[ServedModel], executor: ThreadPoolExecutor) -> None:
        self.config = config
        self.models = models
        self._executor = executor
        # Registers the worker with a controller or etcd (serve --controller/--registry); see worker/agent.py.
        self.registration: RegistrationAgent | None = None
        self.metrics = WorkerMetrics()
        for served in models:
            served.admission.observer = self.metrics.admission_changed
            self.metrics.admission_changed(served.metadata.model, 0, 0)  # the gauges exist from the start
        self.health = health.aio.HealthServicer()
        # Innermost: every ModelWorker response carries an ORCA load report (worker/orca.py).
        orca = OrcaInterceptor(models, lambda: self.registration.instance_id if self.registration else None)
        self.server = grpc.aio.server(
            interceptors=[*_interceptors(config, self.metrics), orca], options=_server_options(config.server)
        )
        worker_pb2_grpc.add_ModelWorkerServicer_to_server(ModelWorkerServicer(WorkerService(models, config.limits)), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (WORKER_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        bind = f"{config.server.host}:{config.server.port}"
        if config.tls is not None:
            self.port = self.server.add_secure_port(bind, _server_credentials(config.tls))
        else:
            self.port = self.server.add_insecure_port(bind)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.server.host}:{config.server.port}")

    @property
    def address(self) -> str:
        return f"{self.config.server.host}:{self.port}"

    async def start(self) -> None:
        await self.server.start()
        for name in ("", WORKER_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.registration is not None:
            await self.registration.start()

    async def drain(self) -> None:
        """NOT_SERVING first so balancers stop sending, then in-flight calls get the grace period."""
        await self.health.enter_graceful_shutdown()
        if self.registration is not None:
            # Leave the registry before the port closes, so routers stop sending first.
            await self.registration.stop()
        await self.server.stop(self.config.server.grace_period_s)
        # Stopping the server cancelled the calls left, which tells their threads to stop: wait for
        # them before the clients free what those threads use (a llama.cpp context mid-decode).
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        for served in {id(m.client): m.client for m in self.models}.values():
            await served.close()


async def build_worker(config: Config) -> Worker:
    executor = ThreadPoolExecutor(max_workers=config.blocking_pool_size(), thread_name_prefix="modelwire-blocking")
    return Worker(config, await load_models(config, executor), executor)


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
    registration: RegistrationSettings | None = None,
    lifeline: bool = False,
) -> None:
    """Runs until SIGTERM or SIGINT (or, with `lifeline`, until stdin closes: the supervising
    parent is gone), then drains within the configured grace period."""
    worker = await build_worker(config)
    if registration is not None:
        worker.registration = worker_agent(registration, worker.models, config.server.host, worker.port)
    observability = config.observability
    if serve_metrics_here and observability.metrics_port is not None:
        try:
            bound = serve_metrics(worker.metrics, observability.metrics_host, observability.metrics_port)
        except OSError as error:
            raise StartupFailure(
                f"observability.metrics_port: cannot listen on {observability.metrics_host}:{observability.metrics_port}: {error.strerror}"
            ) from None
        logger.info("metrics on http://%s:%d/metrics", observability.metrics_host, bound)
    await worker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if lifeline:
        _watch_lifeline(stop)
    logger.info("serving %s on %s", ", ".join(m.metadata.model for m in worker.models), worker.address)
    if on_ready is not None:
        on_ready(worker)
    await stop.wait()
    logger.info("draining: grace period %.1fs", config.server.grace_period_s)
    await worker.drain()
    logger.info("stopped")
