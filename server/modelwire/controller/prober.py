"""The controller's active health checks: follows every registered instance's health Watch and
records the verdicts in the registry."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from modelwire.core.backoff import Backoff
from modelwire.core.settings import PeerAccess
from modelwire.fleet.health import follow_health
from modelwire.fleet.registry import Registry
from modelwire.fleet.types import EventType
from modelwire.rpc.channels import dial

logger = logging.getLogger(__name__)


class HealthProber:
    """Follows the health of every instance in a registry and records the verdicts in it."""

    def __init__(self, registry: Registry, workers: PeerAccess) -> None:
        self._registry = registry
        self._workers = workers
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
        backoff = Backoff()
        while True:
            try:
                async for batch in self._registry.watch():
                    backoff.reset()
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
                await backoff.wait()

    def _ensure(self, instance_id: str, address: str) -> None:
        probe = self._probes.get(instance_id)
        if probe is not None and probe[0] == address:
            return
        self._stop(instance_id)
        self._probes[instance_id] = (
            address,
            asyncio.create_task(self._probe(instance_id, address)),
        )

    def _stop(self, instance_id: str) -> None:
        probe = self._probes.pop(instance_id, None)
        if probe is not None:
            probe[1].cancel()

    async def _probe(self, instance_id: str, address: str) -> None:
        def mark(serving: bool | None) -> None:
            self._registry.mark_probe(instance_id, serving)

        async with dial(address, self._workers.tls, self._workers.token) as channel:
            await follow_health(channel, mark)
