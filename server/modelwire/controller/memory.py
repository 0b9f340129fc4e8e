"""The embedded registry: instances live in the controller's memory; a lapsed lease removes them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from modelwire.fleet.registry import DEFAULT_TTL_S, Registry, WatchHub, check_spec
from modelwire.fleet.types import (
    EventType,
    Instance,
    InstanceEvent,
    InstanceSpec,
    Lease,
    ModelLoad,
    WatchBatch,
)

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    spec: InstanceSpec
    load: dict[str, ModelLoad] = field(default_factory=dict)
    seen_monotonic: float = 0.0
    seen_wall: float = 0.0
    probe: bool | None = None
    healthy: bool = True


class MemoryRegistry(Registry):
    """The embedded registry: instances live in this process; a lapsed lease removes the instance.

    An instance is healthy while its heartbeats are on time (none missed for two intervals) and no
    active health check (`mark_probe`) has seen it NOT_SERVING or unreachable.
    """

    def __init__(
        self, ttl_s: float = DEFAULT_TTL_S, heartbeat_interval_s: float | None = None
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.ttl_s = ttl_s
        self.heartbeat_interval_s = heartbeat_interval_s or ttl_s / 3
        self._entries: dict[str, _Entry] = {}
        self._hub = WatchHub()
        self._reaper: asyncio.Task[None] | None = None

    def __str__(self) -> str:
        return f"in-memory registry, lease TTL {self.ttl_s:g}s"

    async def start(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap(), name="registry-reaper")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        self._hub.close()

    async def register(self, spec: InstanceSpec) -> Lease:
        spec = check_spec(spec)
        previous = self._entries.get(spec.instance_id)
        entry = _Entry(spec, load=previous.load if previous else {})
        self._touch(entry)
        self._entries[spec.instance_id] = entry
        kind = EventType.UPDATED if previous else EventType.ADDED
        logger.info(
            "%s instance %s at %s serving %s",
            "re-registered" if previous else "registered",
            spec.instance_id,
            spec.address,
            ", ".join(spec.model_names),
        )
        self._hub.publish([InstanceEvent(kind, self._view(entry))])
        return Lease(spec.instance_id, self.ttl_s, self.heartbeat_interval_s)

    async def heartbeat(self, instance_id: str, load: Mapping[str, ModelLoad]) -> bool:
        entry = self._entries.get(instance_id)
        if entry is None:
            return False
        served = {name: load.get(name, ModelLoad()) for name in entry.spec.model_names}
        changed = served != entry.load
        entry.load = served
        was_healthy = entry.healthy
        self._touch(entry)
        if changed or was_healthy != entry.healthy:
            self._hub.publish([InstanceEvent(EventType.UPDATED, self._view(entry))])
        return True

    async def deregister(self, instance_id: str) -> bool:
        entry = self._entries.pop(instance_id, None)
        if entry is None:
            return False
        logger.info("deregistered instance %s at %s", instance_id, entry.spec.address)
        self._hub.publish([InstanceEvent(EventType.REMOVED, self._view(entry))])
        return True

    def owner_of(self, instance_id: str) -> str | None:
        entry = self._entries.get(instance_id)
        return None if entry is None else entry.spec.owner

    def instances(self, model: str = "", healthy_only: bool = False) -> list[Instance]:
        return [
            self._view(entry)
            for _, entry in sorted(self._entries.items())
            if (not model or entry.spec.serves(model)) and (entry.healthy or not healthy_only)
        ]

    def watch(self, model: str = "") -> AsyncIterator[WatchBatch]:
        return self._hub.watch(model, lambda: self.instances(model))

    def mark_probe(self, instance_id: str, serving: bool | None) -> None:
        entry = self._entries.get(instance_id)
        if entry is None or entry.probe == serving:
            return
        entry.probe = serving
        self._refresh_health(entry)

    def _touch(self, entry: _Entry) -> None:
        entry.seen_monotonic = time.monotonic()
        entry.seen_wall = time.time()
        entry.healthy = self._healthy(entry, entry.seen_monotonic)

    def _healthy(self, entry: _Entry, now: float) -> bool:
        on_time = now - entry.seen_monotonic <= 2 * self.heartbeat_interval_s
        return on_time and entry.probe is not False

    def _refresh_health(self, entry: _Entry) -> None:
        healthy = self._healthy(entry, time.monotonic())
        if healthy != entry.healthy:
            entry.healthy = healthy
            logger.info(
                "instance %s at %s is %s",
                entry.spec.instance_id,
                entry.spec.address,
                "healthy" if healthy else "unhealthy",
            )
            self._hub.publish([InstanceEvent(EventType.UPDATED, self._view(entry))])

    def _view(self, entry: _Entry) -> Instance:
        return Instance(entry.spec, dict(entry.load), entry.healthy, entry.seen_wall)

    async def _reap(self) -> None:
        """Removes instances whose lease lapsed and marks late ones unhealthy, every tenth of a
        TTL."""
        tick = max(0.05, min(0.5, self.ttl_s / 10))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            expired = [
                entry for entry in self._entries.values() if now - entry.seen_monotonic > self.ttl_s
            ]
            for entry in expired:
                del self._entries[entry.spec.instance_id]
                logger.warning(
                    "instance %s at %s missed its heartbeats for %.1fs (TTL); removed",
                    entry.spec.instance_id,
                    entry.spec.address,
                    now - entry.seen_monotonic,
                )
            if expired:
                self._hub.publish(
                    [InstanceEvent(EventType.REMOVED, self._view(entry)) for entry in expired]
                )
            for entry in list(self._entries.values()):
                self._refresh_health(entry)
