"""The gateway's instance table and its choice of instance: the power of two choices on load
relative to weight.

- Load of an instance for a model = the calls this gateway has open to it for that model, plus the
  load others put on it: the instance's last report (heartbeat through the controller, or the ORCA
  trailer of the last call) less what this gateway had open at that moment. Ties go to the instance
  picked least recently, so an idle fleet is served in turn rather than at random.
- Health: the registry's verdict, and the gateway's own grpc.health.v1 Watch on each instance, so a
  draining or killed worker is left at once, not when its lease lapses.
- Requests and responses are forwarded as bytes (only the model name is read from the request):
  no re-encoding, no buffering; stream chunks pass through one by one.
- The caller's deadline (time remaining), cancellation and metadata go upstream; a call that fails
  with UNAVAILABLE before its first response message is retried on another instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from modelwire.fleet.health import follow_health
from modelwire.fleet.orca import LOAD_TRAILER, ORCA_TRAILER
from modelwire.fleet.registry import DEFAULT_TTL_S, RegistryClient
from modelwire.fleet.types import EventType, Instance, WatchBatch
from modelwire.core.backoff import Backoff
from modelwire.rpc.channels import client_options

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
STALE_GRACE_S = DEFAULT_TTL_S
LIST_MODELS_TIMEOUT_S = 5.0
# Metadata that belongs to this hop, not to the call: never forwarded.
_HOP_KEYS = frozenset({"te", "content-type", "user-agent", "grpc-accept-encoding", "grpc-encoding", "grpc-timeout"})
Metadata = tuple[tuple[str, str | bytes], ...]


class NoInstance(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Route:
    """The gateway's routing state for one instance."""

    instance: Instance
    channel: grpc.aio.Channel
    open: dict[str, int] = field(default_factory=dict)
    # Load others put on the instance, per model, from its last report.
    others: dict[str, float] = field(default_factory=dict)
    probe: bool | None = None
    picked_at: float = 0.0
    probe_task: asyncio.Task[None] | None = None

    @property
    def instance_id(self) -> str:
        return self.instance.instance_id

    @property
    def routable(self) -> bool:
        return self.instance.healthy and self.probe is not False

    def score(self, model: str) -> float:
        return (self.open.get(model, 0) + self.others.get(model, 0.0)) / max(1, self.instance.spec.weight)

    def reported(self, model: str, load: float, open_excluding: int = 0) -> None:
        """Another party's view of the instance's load, which includes our own open calls."""
        self.others[model] = max(0.0, load - (self.open.get(model, 0) - open_excluding))


def model_field(raw: bytes) -> str:
    """Reads field 1 (`model`, a string in ModelRequest and CountTokenRequest) without parsing the rest."""
    position = 0
    try:
        while position < len(raw):
            key, position = _varint(raw, position)
            number, wire = key >> 3, key & 7
            if wire == 2:
                length, position = _varint(raw, position)
                if number == 1:
                    return raw[position:position + length].decode()
                position += length
            elif wire == 0:
                _, position = _varint(raw, position)
            elif wire == 1:
                position += 8
            elif wire == 5:
                position += 4
            else:
                break
    except (IndexError, UnicodeDecodeError):
        pass
    return ""


def _varint(raw: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def forwarded_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> Metadata:
    return tuple((k, v) for k, v in metadata or () if not k.startswith(":") and k not in _HOP_KEYS)


def returned_trailers(metadata: Sequence[tuple[str, str | bytes]] | None) -> Metadata:
    """Upstream trailers the caller gets: not the upstream's ORCA report (it describes one worker, and
    the caller balances across gateways)."""
    return tuple((k, v) for k, v in metadata or () if k not in (ORCA_TRAILER, LOAD_TRAILER))


class Router:
    """The instance table and the choice of instance; fed by a registry watch."""

    def __init__(self, source: RegistryClient, probe_health: bool = True) -> None:
        self.source = source
        self.routes: dict[str, Route] = {}
        self._channels: dict[str, tuple[grpc.aio.Channel, int]] = {}
        self._probe_health = probe_health
        self._follower: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._stale: dict[str, asyncio.TimerHandle] = {}
        self.synced = asyncio.Event()
        self.changed = asyncio.Condition()

    async def start(self) -> None:
        self._follower = asyncio.create_task(self._follow(), name="gateway-registry-watch")

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        for instance_id in list(self.routes):
            self._remove(instance_id)
        for channel, _ in list(self._channels.values()):
            await channel.close()
        self._channels.clear()
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self.source.close()

    # -- the table -------------------------------------------------------------------------------

    async def _follow(self) -> None:
        backoff = Backoff()
        lost = False
        while True:
            try:
                async for batch in self.source.watch():
                    await self._apply(batch)
                    if lost:
                        logger.info("instance source %s is back", self.source)
                        lost = False
                    backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not lost:
                    logger.warning("lost the instance source %s (%s); routing on the last known instances, retrying",
                                   self.source, error or type(error).__name__)
                    lost = True
            await backoff.wait()

    async def _apply(self, batch: WatchBatch) -> None:
        if batch.snapshot:
            current = {e.instance.instance_id for e in batch.events}
            for gone in set(self.routes) - current:
                if not self.synced.is_set():
                    self._remove(gone)
                elif gone not in self._stale:
                    # A later snapshot (the source restarted) may not have every worker back yet: keep
                    # routing to the missing ones (health permitting) for a lease TTL before dropping them.
                    self._stale[gone] = asyncio.get_running_loop().call_later(STALE_GRACE_S, self._remove, gone)
        for event in batch.events:
            if event.type is EventType.REMOVED:
                self._remove(event.instance.instance_id)
            else:
                self._upsert(event.instance)
        if batch.snapshot:
            self.synced.set()
        async with self.changed:
            self.changed.notify_all()

    def _upsert(self, instance: Instance) -> None:
        stale = self._stale.pop(instance.instance_id, None)
        if stale is not None:
            stale.cancel()
        route = self.routes.get(instance.instance_id)
        if route is not None and route.instance.address != instance.address:
            self._remove(instance.instance_id)
            route = None
        if route is None:
            route = Route(instance, self._channel(instance.address))
            self.routes[instance.instance_id] = route
            if self._probe_health:
                route.probe_task = asyncio.create_task(self._probe(route))
            logger.info("instance %s at %s serves %s", instance.instance_id, instance.address,
                        ", ".join(instance.spec.model_names))
        route.instance = instance
        for model, load in instance.load.items():
            route.reported(model, load.total)

    def _remove(self, instance_id: str) -> None:
        stale = self._stale.pop(instance_id, None)
        if stale is not None:
            stale.cancel()
        route = self.routes.pop(instance_id, None)
        if route is None:
            return
        logger.info("instance %s at %s left", instance_id, route.instance.address)
        if route.probe_task is not None:
            route.probe_task.cancel()
        self._release(route.instance.address)

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel, users = self._channels.get(address, (None, 0))
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=client_options())
        self._channels[address] = (channel, users + 1)
        return channel

    def _release(self, address: str) -> None:
        """Closes an address's channel once no instance uses it; calls still open on it finish first."""
        channel, users = self._channels[address]
        if users > 1:
            self._channels[address] = (channel, users - 1)
            return
        del self._channels[address]
        task = asyncio.get_running_loop().create_task(channel.close(grace=30.0))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _probe(self, route: Route) -> None:
        def mark(serving: bool | None) -> None:
            if serving != route.probe:
                logger.info("instance %s at %s: health %s", route.instance_id, route.instance.address,
                            {True: "SERVING", False: "NOT_SERVING or unreachable", None: "unknown"}[serving])
            route.probe = serving

        await follow_health(route.channel, mark)

    # -- choosing ----------------------------------------------------------------------------------

    def pick(self, model: str, tried: set[str]) -> Route:
        serving = [r for r in self.routes.values() if r.instance.spec.serves(model)]
        if not serving:
            known = sorted({m for r in self.routes.values() for m in r.instance.spec.model_names})
            raise NoInstance(grpc.StatusCode.NOT_FOUND,
                             f"no instance serves model {model!r}; served models: {', '.join(known) or 'none'}")
        candidates = [r for r in serving if r.routable and r.instance_id not in tried]
        if not candidates:
            # Nothing healthy is left: try the others rather than refuse (health may lag behind).
            candidates = [r for r in serving if r.instance_id not in tried]
        if not candidates:
            raise NoInstance(grpc.StatusCode.UNAVAILABLE,
                             f"every instance of model {model!r} was tried and is unavailable")
        if len(candidates) > 2:
            candidates = random.sample(candidates, 2)
        chosen = min(candidates, key=lambda r: (r.score(model), r.picked_at))
        chosen.picked_at = time.monotonic()
        return chosen

    def instances(self) -> list[Route]:
        return list(self.routes.values())


