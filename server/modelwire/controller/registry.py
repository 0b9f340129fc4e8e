"""The registry behind the controller: an interface, and the embedded in-memory implementation.

Three roles, so a backend can be swapped without touching its users:
- `Registrar`: what a worker's registration agent calls (register, heartbeat, deregister).
- `InstanceSource`: what the gateway reads (a snapshot, then changes).
- `Registry`: both, plus listing and health marks; what the ModelController service serves.
`MemoryRegistry` is the embedded one; `controller/etcd.py` keeps the same contract in etcd, and
`controller/remote.py` is a Registrar and InstanceSource that talks to a controller over gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from modelwire.controller.types import (
    EventType,
    Instance,
    InstanceEvent,
    InstanceSpec,
    Lease,
    ModelLoad,
    WatchBatch,
    valid_instance_id,
)
from modelwire.core.errors import FieldViolation, InvalidRequest

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 15.0
# A watcher that falls this many batches behind is cut off; it reconnects and gets a fresh snapshot.
WATCH_BACKLOG = 4096


class Registrar(Protocol):
    """The registration side, as a worker's agent sees it."""

    async def register(self, spec: InstanceSpec) -> Lease: ...

    async def heartbeat(self, instance_id: str, load: Mapping[str, ModelLoad]) -> bool:
        """Renews the lease; False when the registry does not know the instance (register again)."""
        ...

    async def deregister(self, instance_id: str) -> bool: ...


class InstanceSource(Protocol):
    """The discovery side, as a gateway sees it."""

    def watch(self, model: str = "") -> AsyncIterator[WatchBatch]:
        """A snapshot batch first, then deltas; raises when the source is lost (the caller re-watches)."""
        ...


class RegistryClient(Registrar, InstanceSource, Protocol):
    """A registry across the network (a controller, or etcd): both sides, and a connection to close."""

    async def close(self) -> None: ...


def connect(controller: str | None, registry: str | None) -> RegistryClient:
    """The one place that picks the registry a worker, a gateway or `modelwire instances` talks to:
    etcd when `--registry etcd://…` is given, else the controller at `--controller`."""
    if registry:
        from modelwire.controller.etcd import EtcdRegistry

        return EtcdRegistry.from_url(registry)
    if controller:
        from modelwire.controller.remote import RemoteController

        return RemoteController(controller)
    raise ValueError("neither --controller nor --registry is given")


class Registry(ABC):
    """A registry the ModelController service can serve."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def register(self, spec: InstanceSpec) -> Lease: ...

    @abstractmethod
    async def heartbeat(self, instance_id: str, load: Mapping[str, ModelLoad]) -> bool: ...

    @abstractmethod
    async def deregister(self, instance_id: str) -> bool: ...

    @abstractmethod
    def instances(self, model: str = "", healthy_only: bool = False) -> list[Instance]:
        """The current instances (of `model`, if given), ordered by id."""

    @abstractmethod
    def watch(self, model: str = "") -> AsyncIterator[WatchBatch]: ...

    @abstractmethod
    def mark_probe(self, instance_id: str, serving: bool | None) -> None:
        """Records an active health check's verdict (None: not known yet)."""


def check_spec(spec: InstanceSpec) -> InstanceSpec:
    """Validates a registration and fills in an id when none was proposed."""
    violations = []
    if spec.instance_id and not valid_instance_id(spec.instance_id):
        violations.append(FieldViolation("instance_id", "letters, digits, '-', '_' and '.' only, at most 128"))
    host, sep, port = spec.address.rpartition(":")
    if not sep or not host or not port.isdigit():
        violations.append(FieldViolation("address", "must be host:port, dialable by callers"))
    if not spec.models:
        violations.append(FieldViolation("models", "must name at least one model"))
    for index, model in enumerate(spec.models):
        if not model.model or "/" in model.model:
            violations.append(FieldViolation(f"models[{index}].model", "must be non-empty and contain no '/'"))
        if model.capacity < 0:
            violations.append(FieldViolation(f"models[{index}].capacity", "must not be negative"))
    if spec.weight < 0:
        violations.append(FieldViolation("weight", "must not be negative"))
    if violations:
        raise InvalidRequest(violations)
    return replace(spec, instance_id=spec.instance_id or uuid.uuid4().hex, weight=spec.weight or 1)


class WatchHub:
    """Fans registry changes out to watchers, each with its own bounded backlog."""

    def __init__(self) -> None:
        self._watchers: dict[int, tuple[str, asyncio.Queue[tuple[InstanceEvent, ...] | None]]] = {}
        self._next = 0

    def publish(self, events: list[InstanceEvent]) -> None:
        for key, (model, queue) in list(self._watchers.items()):
            mine = tuple(e for e in events if not model or e.instance.spec.serves(model))
            if not mine:
                continue
            if queue.qsize() >= WATCH_BACKLOG:
                logger.warning("a registry watcher fell %d batches behind; cutting it off", WATCH_BACKLOG)
                del self._watchers[key]
                queue.put_nowait(None)
                continue
            queue.put_nowait(mine)

    async def watch(self, model: str, snapshot: Callable[[], list[Instance]]) -> AsyncIterator[WatchBatch]:
        """Subscribes and takes the snapshot in one step, so no change falls between them."""
        queue: asyncio.Queue[tuple[InstanceEvent, ...] | None] = asyncio.Queue()
        key = self._next
        self._next += 1
        self._watchers[key] = (model, queue)
        try:
            yield WatchBatch(True, tuple(InstanceEvent(EventType.ADDED, i) for i in snapshot()))
            while True:
                events = await queue.get()
                if events is None:
                    raise ConnectionError("watcher fell behind; watch again for a fresh snapshot")
                yield WatchBatch(False, events)
        finally:
            self._watchers.pop(key, None)

    def close(self) -> None:
        for _, queue in self._watchers.values():
            queue.put_nowait(None)
        self._watchers.clear()


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

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, heartbeat_interval_s: float | None = None) -> None:
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
        logger.info("%s instance %s at %s serving %s", "re-registered" if previous else "registered",
                    spec.instance_id, spec.address, ", ".join(spec.model_names))
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
            logger.info("instance %s at %s is %s", entry.spec.instance_id, entry.spec.address,
                        "healthy" if healthy else "unhealthy")
            self._hub.publish([InstanceEvent(EventType.UPDATED, self._view(entry))])

    def _view(self, entry: _Entry) -> Instance:
        return Instance(entry.spec, dict(entry.load), entry.healthy, entry.seen_wall)

    async def _reap(self) -> None:
        """Removes instances whose lease lapsed and marks late ones unhealthy, every tenth of a TTL."""
        tick = max(0.05, min(0.5, self.ttl_s / 10))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            expired = [entry for entry in self._entries.values() if now - entry.seen_monotonic > self.ttl_s]
            for entry in expired:
                del self._entries[entry.spec.instance_id]
                logger.warning("instance %s at %s missed its heartbeats for %.1fs (TTL); removed",
                               entry.spec.instance_id, entry.spec.address, now - entry.seen_monotonic)
            if expired:
                self._hub.publish([InstanceEvent(EventType.REMOVED, self._view(entry)) for entry in expired])
            for entry in list(self._entries.values()):
                self._refresh_health(entry)
