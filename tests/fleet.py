"""Helpers for the fleet tests: an in-process controller, workers that register, event waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blocking_provider import PROVIDER
from modelwire.app.config import Config
from modelwire.app.server import Worker, build_worker
from modelwire.controller.memory import MemoryRegistry
from modelwire.controller.server import ControllerServer
from modelwire.core.settings import (
    ControllerSection,
    GatewaySection,
    ModelConfig,
    RegistrationConfig,
    RegistryAccess,
)
from modelwire.core.settings import ServerConfig as PlainServerConfig
from modelwire.core.settings import WorkerServerConfig as ServerConfig
from modelwire.fleet import convert
from modelwire.fleet.remote import RemoteController
from modelwire.fleet.types import WatchBatch
from modelwire.gateway.server import Gateway
from modelwire.v1 import controller_pb2 as cpb
from modelwire.v1 import controller_pb2_grpc as cpb_grpc
from modelwire.worker.agent import RegistrationAgent, worker_agent

TTL_S = 2.0


def blocking_model(
    name: str = "slow", max_concurrency: int = 8, max_queue: int = 100, **options: object
) -> ModelConfig:
    return ModelConfig(
        name=name,
        provider=PROVIDER,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        options=dict(options),
    )


def blocking_config(*models: ModelConfig, grace_period_s: float = 5.0) -> Config:
    return Config(
        server=ServerConfig(host="127.0.0.1", port=0, grace_period_s=grace_period_s),
        models=models or (blocking_model(),),
    )


@dataclass(frozen=True)
class Joining:
    """How a test worker joins a fleet: the registry it uses, and what it registers."""

    controller: str | None = None
    registry: str | None = None
    weight: int = 1
    labels: dict[str, str] = field(default_factory=dict)

    def access(self) -> RegistryAccess:
        return RegistryAccess(controller=self.controller, etcd=self.registry)

    def registration(self) -> RegistrationConfig:
        return RegistrationConfig(weight=self.weight, labels=dict(self.labels))


def agent_for(worker: Worker, joining: Joining) -> RegistrationAgent:
    return worker_agent(
        joining.access(), joining.registration(), worker.targets, "127.0.0.1", worker.port
    )


@asynccontextmanager
async def running_controller(
    ttl_s: float = TTL_S, port: int = 0, probe_health: bool = True
) -> AsyncIterator[ControllerServer]:
    server = ControllerServer(
        MemoryRegistry(ttl_s),
        PlainServerConfig(port=port, grace_period_s=0),
        ControllerSection(probe_health=probe_health),
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def registered_worker(config: Config, settings: Joining) -> AsyncIterator[Worker]:
    """A started worker whose agent registers it; drained (and so deregistered) on exit."""
    config = replace(config, server=replace(config.server, host="127.0.0.1", port=0))
    worker = await build_worker(config)
    worker.registration = agent_for(worker, settings)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.drain()


def agent_of(worker: Worker) -> RegistrationAgent:
    assert worker.registration is not None
    return worker.registration


async def registered(worker: Worker, timeout: float = 10.0) -> str:
    agent = agent_of(worker)
    await asyncio.wait_for(agent.registered.wait(), timeout)
    return agent.instance_id


class Watcher:
    """Reads a WatchInstances stream in the background and lets a test wait for a matching event."""

    def __init__(self, address: str, model: str = "") -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._call = cpb_grpc.ModelControllerStub(self._channel).WatchInstances(
            cpb.WatchInstancesRequest(model=model)
        )
        self.batches: list[tuple[float, WatchBatch]] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._call:
            async with self._changed:
                self.batches.append((time.monotonic(), convert.batch_from_pb(message)))
                self._changed.notify_all()

    async def wait_for(self, match: Callable[[WatchBatch], bool], timeout: float) -> float:
        """The monotonic time of the first batch (old or new) that matches."""

        async def found() -> float:
            async with self._changed:
                seen = 0
                while True:
                    for at, batch in self.batches[seen:]:
                        if match(batch):
                            return at
                    seen = len(self.batches)
                    await self._changed.wait()

        return await asyncio.wait_for(found(), timeout)

    async def close(self) -> None:
        self._call.cancel()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._channel.close()


def has_event(kind: str, instance_id: str) -> Callable[[WatchBatch], bool]:
    return lambda batch: any(
        e.type.value == kind and e.instance.instance_id == instance_id for e in batch.events
    )


async def serving(address: str, timeout: float = 30.0) -> None:
    """Returns once the server at `address` says SERVING on its health Watch."""
    async with grpc.aio.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=timeout
        )
        async for status in watch:
            if status.status == health_pb2.HealthCheckResponse.SERVING:
                watch.cancel()
                return
    raise AssertionError(f"{address} never said SERVING")


async def wait_until(router_changed: asyncio.Condition, predicate: object, timeout: float) -> None:
    async def wait() -> None:
        async with router_changed:
            await router_changed.wait_for(predicate)  # type: ignore[arg-type]

    await asyncio.wait_for(wait(), timeout)


@asynccontextmanager
async def running_gateway(
    controller_address: str, probe_health: bool = True
) -> AsyncIterator[Gateway]:
    """Settled at once: these tests start their workers first (test_fleet_resilience.py has the
    window)."""
    gateway = Gateway(
        RemoteController(controller_address),
        PlainServerConfig(port=0, grace_period_s=1.0),
        GatewaySection(settle_s=0, connect_timeout_s=0.3),
        probe_health=probe_health,
    )
    await gateway.start()
    await asyncio.wait_for(gateway.router.synced.wait(), 10)
    try:
        yield gateway
    finally:
        await gateway.stop()


class CallerSide:
    """A gRPC caller's side of a gateway's forwarded call, as forwarding uses it (no network)."""

    def time_remaining(self) -> float | None:
        return 30.0

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None:
        return ()

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        return None

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        return None

    def trailing_metadata(self) -> Any:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing: Any = ()) -> NoReturn:
        raise AssertionError(f"aborted: {code} {details}")
