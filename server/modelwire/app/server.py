"""Assembles a worker from configuration and runs it until a signal, then drains it."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from modelwire.app.config import Config
from modelwire.proxy.registry import provider_class
from modelwire.v1 import worker_pb2, worker_pb2_grpc
from modelwire.worker.admission import Admission
from modelwire.worker.service import ServedModel, WorkerService
from modelwire.worker.servicer import ModelWorkerServicer

logger = logging.getLogger(__name__)

WORKER_SERVICE = worker_pb2.DESCRIPTOR.services_by_name["ModelWorker"].full_name


async def load_models(config: Config, executor: ThreadPoolExecutor) -> list[ServedModel]:
    """Builds each model's client on the pool: loading a local model blocks for seconds."""
    loop = asyncio.get_running_loop()
    served = []
    for model in config.models:
        cls = provider_class(model)
        client = await loop.run_in_executor(executor, cls.new_client, model, executor)
        for metadata in client.models():
            served.append(ServedModel(metadata, client, Admission(metadata.model, model.max_concurrency, model.max_queue)))
    return served


class Worker:
    """A running gRPC worker: ModelWorker, health and reflection on one port."""

    def __init__(self, config: Config, models: list[ServedModel], executor: ThreadPoolExecutor) -> None:
        self.config = config
        self.models = models
        self._executor = executor
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server()
        worker_pb2_grpc.add_ModelWorkerServicer_to_server(ModelWorkerServicer(WorkerService(models)), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (WORKER_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.port = self.server.add_insecure_port(f"{config.server.host}:{config.server.port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {config.server.host}:{config.server.port}")

    @property
    def address(self) -> str:
        return f"{self.config.server.host}:{self.port}"

    async def start(self) -> None:
        await self.server.start()
        for name in ("", WORKER_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def drain(self) -> None:
        """NOT_SERVING first so balancers stop sending, then in-flight calls get the grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.server.grace_period_s)
        for served in {id(m.client): m.client for m in self.models}.values():
            await served.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


async def build_worker(config: Config) -> Worker:
    executor = ThreadPoolExecutor(max_workers=config.server.blocking_threads, thread_name_prefix="modelwire-blocking")
    return Worker(config, await load_models(config, executor), executor)


async def serve(config: Config, on_ready: Callable[[Worker], None] | None = None) -> None:
    """Runs until SIGTERM or SIGINT, then drains within the configured grace period."""
    worker = await build_worker(config)
    await worker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger.info("serving %s on %s", ", ".join(m.metadata.model for m in worker.models), worker.address)
    if on_ready is not None:
        on_ready(worker)
    await stop.wait()
    logger.info("draining: grace period %.1fs", config.server.grace_period_s)
    await worker.drain()
    logger.info("stopped")
