"""Active health checks: follow an instance's grpc.health.v1 Watch stream, so health is not known only
from heartbeats (a killed worker's stream breaks at once; a draining one says NOT_SERVING at once)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelwire.controller.registry import Registry
from modelwire.controller.remote import CHANNEL_OPTIONS
from modelwire.controller.types import EventType
from modelwire.v1 import worker_pb2

logger = logging.getLogger(__name__)

WORKER_SERVICE: str = worker_pb2.DESCRIPTOR.services_by_name["ModelWorker"].full_name
RETRY_S = (0.2, 0.5, 1.0, 2.0)


async def follow_health(
    channel: grpc.aio.Channel, on_change: Callable[[bool | None], None], service: str = WORKER_SERVICE
) -> None:
    """Calls `on_change(True)` on SERVING, `on_change(False)` on anything else or when the stream
    breaks, and keeps watching (with a short backoff) until cancelled. A server without the health
    service is reported once as None (unknown) and not watched further."""
    stub = health_pb2_grpc.HealthStub(channel)
    failures = 0
    while True:
        call = stub.Watch(health_pb2.HealthCheckRequest(service=service))
        try:
            async for response in call:
                failures = 0
                on_change(response.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                on_change(None)
                return
        finally:
            call.cancel()
        on_change(False)
        await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S) - 1)])
        failures += 1


class HealthProber:
    """Follows the health of every instance in a registry and records the verdicts in it."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._probes: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="health-prober")

    async def close(self) -> None:
        tasks = [task for _, task in self._probes.values()]
        if self._task is not None:
            tasks.append(self._task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._probes.clear()

    async def _follow(self) -> None:
        while True:
            try:
                async for batch in self._registry.watch():
                    if batch.snapshot:
                        current = {e.instance.instance_id for e in batch.events}
                        for gone in set(self._probes) - current:
                            self._stop(gone)
                    for event in batch.events:
                        if event.type is EventType.REMOVED:
                            self._stop(event.instance.instance_id)
                        else:
                            self._ensure(event.instance.instance_id, event.instance.address)
            except ConnectionError as lost:
                logger.debug("health prober lost its registry watch (%s); watching again", lost)
                await asyncio.sleep(0.5)

    def _ensure(self, instance_id: str, address: str) -> None:
        probe = self._probes.get(instance_id)
        if probe is not None and probe[0] == address:
            return
        self._stop(instance_id)
        self._probes[instance_id] = (address, asyncio.create_task(self._probe(instance_id, address)))

    def _stop(self, instance_id: str) -> None:
        probe = self._probes.pop(instance_id, None)
        if probe is not None:
            probe[1].cancel()

    async def _probe(self, instance_id: str, address: str) -> None:
        def mark(serving: bool | None) -> None:
            self._registry.mark_probe(instance_id, serving)

        async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            await follow_health(channel, mark)
