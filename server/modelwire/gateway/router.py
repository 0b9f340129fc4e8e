"""The gateway's instance table and its choice of instance, made by a `PickPolicy`
(core/balance.py): by default the power of two choices on load relative to weight.

- Load of an instance for a model = the calls this gateway has open to it for that model, plus the
  load others put on it: the instance's last report (heartbeat through the controller, or the ORCA
  trailer of the last call) less what this gateway had open at that moment. A report ages: it
  halves every LOAD_HALF_LIFE_S, so an instance last seen busy is tried again once it is quiet.
  Ties go to the instance picked least recently, so an idle fleet is served in turn.
- Health: the registry's verdict, and the gateway's own grpc.health.v1 Watch on each instance, so a
  draining or killed worker is left at once, not when its lease lapses.
- Requests and responses are forwarded as bytes (only the model name is read from the request):
  no re-encoding, no buffering; stream chunks pass through one by one.
- Until the first snapshot, and for a model served within `recently_served_s`, a model with no
  instance is "not ready" (UNAVAILABLE with RetryInfo), never NOT_FOUND: NOT_FOUND is permanent to
  SDKs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from modelwire.core.backoff import Backoff
from modelwire.core.balance import LeastLoaded, PickPolicy
from modelwire.core.errors import FieldViolation, InvalidRequest, ModelNotFound, NotReady
from modelwire.core.settings import GatewaySection
from modelwire.fleet.health import follow_health
from modelwire.fleet.registry import DEFAULT_TTL_S, RegistryClient
from modelwire.fleet.types import EventType, Instance, WatchBatch
from modelwire.observe.call_record import sendable
from modelwire.rpc.channels import client_options, dial
from modelwire.rpc.wire import INSTANCE_TRAILER, LOAD_TRAILER, ORCA_TRAILER, Metadata

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
STALE_GRACE_S = DEFAULT_TTL_S
LIST_MODELS_TIMEOUT_S = 5.0
LOAD_HALF_LIFE_S = 5.0
NOT_READY_RETRY_S = 1.0
# Metadata that belongs to this hop, not to the call: never forwarded.
# OpenAI's rate-limit headers, which a worker's quota sends (quota/limiter.py).
RATE_LIMIT_PREFIX = "x-ratelimit-"
_HOP_KEYS = frozenset(
    {"te", "content-type", "user-agent", "grpc-accept-encoding", "grpc-encoding", "grpc-timeout"}
)
_HOP_KEYS_AND_AUTHORIZATION = _HOP_KEYS | {"authorization"}


@dataclass
class Route:
    """The gateway's routing state for one instance."""

    instance: Instance
    channel: grpc.aio.Channel
    open: dict[str, int] = field(default_factory=dict)
    # Load others put on the instance, per model, from its last report: (load, when reported).
    others: dict[str, tuple[float, float]] = field(default_factory=dict)
    probe: bool | None = None
    picked_at: float = 0.0
    probe_task: asyncio.Task[None] | None = None
    _unary: dict[str, grpc.aio.UnaryUnaryMultiCallable] = field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def instance_id(self) -> str:
        return self.instance.instance_id

    def unary(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
        """The channel's callable for a unary `method`, made once: grpc.aio builds a new one at
        every `unary_unary`."""
        call = self._unary.get(method)
        if call is None:
            call = self._unary[method] = self.channel.unary_unary(method)
        return call

    @property
    def routable(self) -> bool:
        return self.instance.healthy and self.probe is not False

    def others_load(self, model: str, now: float) -> float:
        load, at = self.others.get(model, (0.0, now))
        decay: float = 0.5 ** ((now - at) / LOAD_HALF_LIFE_S)
        return load * decay

    @property
    def weight(self) -> int:
        # The registry stores 0 as 1; the floor keeps a policy's division safe whatever the source.
        return max(1, self.instance.spec.weight)

    def load(self, model: str, now: float) -> float:
        """Calls on the instance for `model`, ours and others': not divided by weight (the policy
        weighs it)."""
        return self.open.get(model, 0) + self.others_load(model, now)

    def reported(self, model: str, load: float, open_excluding: int = 0) -> None:
        """Another party's view of the instance's load, which includes our own open calls."""
        self.others[model] = (
            max(0.0, load - (self.open.get(model, 0) - open_excluding)),
            time.monotonic(),
        )


MAX_MODEL_BYTES = 1024


def _model_only() -> type[Message]:
    """A message of `string model = 1` alone, the field ModelRequest, CountTokenRequest and
    EmbedRequest share: a request parsed as one has its other fields skipped (kept as unknown
    bytes, never decoded) and its `model` read as every protobuf parser reads it."""
    file = descriptor_pb2.FileDescriptorProto(
        name="modelwire/gateway/model_only.proto", package="modelwire.gateway", syntax="proto3"
    )
    file.message_type.add(name="ModelOnly").field.add(
        name="model",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("modelwire.gateway.ModelOnly")
    )


_ModelOnly = _model_only()


def model_field(raw: bytes) -> str:
    """The model the worker will read from `raw` (field 1 of ModelRequest, CountTokenRequest and
    EmbedRequest), read by protobuf's own parser as the worker's is: a body that repeats field 1
    names the last one's model, whatever comes before or between. The gateway routes on it and
    holds the caller's allow-list to it, so it must be the model the worker runs: the first field
    1 of a body that repeats it let a caller through to any model. A body that is not protobuf wire
    format, or names no model, is the caller's mistake."""
    try:
        # getattr (B009): a class made at run time, mypy sees no field.
        model: str = getattr(_ModelOnly.FromString(raw), "model")  # noqa: B009
    except DecodeError:
        raise InvalidRequest(
            [FieldViolation("", "the request body is not a valid protobuf message")]
        ) from None
    if len(model.encode()) > MAX_MODEL_BYTES:
        raise InvalidRequest([FieldViolation("model", f"at most {MAX_MODEL_BYTES} bytes")])
    if not model:
        raise InvalidRequest([FieldViolation("model", "must name a served model (see ListModels)")])
    return model


# Fields `leading_model` reads before it gives up on field 1: every protobuf serializer writes
# fields in number order, so `model` comes first; the bound keeps a hostile body's cost constant.
MAX_FIELDS_BEFORE_MODEL = 16


def leading_model(raw: bytes) -> str:
    """The first field 1 within the body's first fields, at a constant cost whatever the body: the
    metrics label of a call, read before authentication. Only a label: what the call routes on and
    is allowed is `model_field`'s reading (a body may repeat field 1). A body whose start is not
    protobuf wire format, or that names no model first, is the caller's mistake."""
    # What every serializer writes: field 1 first, a name shorter than 128 bytes (a one-byte
    # length). Anything else, a refusal included, is read by the loop below.
    if len(raw) > 2 and raw[0] == 0x0A and 0 < raw[1] < 0x80 and raw[1] + 2 <= len(raw):
        try:
            return raw[2 : 2 + raw[1]].decode()
        except UnicodeDecodeError:
            pass
    position = 0
    try:
        for _ in range(MAX_FIELDS_BEFORE_MODEL):
            if position >= len(raw):
                break
            key, position = _varint(raw, position)
            number, wire = key >> 3, key & 7
            if wire == 2:
                length, position = _varint(raw, position)
                if position + length > len(raw):
                    raise IndexError
                if number == 1:
                    if length > MAX_MODEL_BYTES:
                        raise InvalidRequest(
                            [FieldViolation("model", f"at most {MAX_MODEL_BYTES} bytes")]
                        )
                    model = raw[position : position + length].decode()
                    if model:
                        return model
                    break
                position += length
            elif wire == 0:
                _, position = _varint(raw, position)
            elif wire == 1:
                position += 8
            elif wire == 5:
                position += 4
            else:
                raise IndexError
    except (IndexError, UnicodeDecodeError):
        raise InvalidRequest(
            [FieldViolation("", "the request body is not a valid protobuf message")]
        ) from None
    raise InvalidRequest([FieldViolation("model", "must name a served model (see ListModels)")])


def _varint(raw: bytes, position: int) -> tuple[int, int]:
    """A varint of at most 10 bytes (64 bits), as protobuf defines it."""
    value = 0
    for shift in range(0, 70, 7):
        byte = raw[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
    raise IndexError


def forwarded_metadata(
    metadata: Sequence[tuple[str, str | bytes]] | None, authorization: bool = False
) -> Metadata:
    """The caller's metadata for the worker: never this hop's own headers, and the caller's
    `authorization` only when the gateway is told to pass it on (it has a token of its own)."""
    dropped = _HOP_KEYS if authorization else _HOP_KEYS_AND_AUTHORIZATION
    return tuple([(k, v) for k, v in metadata or () if k not in dropped and k[:1] != ":"])


def rate_limits(metadata: Sequence[tuple[str, str | bytes]] | None) -> Metadata:
    """The x-ratelimit-* headers of a worker's answer (its quota), to pass on to the caller."""
    return tuple((k, v) for k, v in metadata or () if k.startswith(RATE_LIMIT_PREFIX))


def refuse_unsendable(metadata: Metadata) -> None:
    """Refuses, naming the header, a text value gRPC cannot send on: a byte outside printable
    ASCII, which the caller's HTTP/2 stack may send and gRPC accepts coming in. Passed on, it
    would fail the call inside the gateway."""
    for key, value in metadata:
        if isinstance(value, str) and not sendable(value):
            raise InvalidRequest(
                [
                    FieldViolation(
                        f"metadata {key}",
                        "has a character gRPC cannot pass on: a text value is printable ASCII; a "
                        "binary value needs a key ending in -bin",
                    )
                ]
            )


# Trailers of a worker's the caller never gets: its load report (it describes one worker, and the
# caller balances across gateways), and its instance id, which the gateway sets itself.
_NOT_RETURNED = frozenset({ORCA_TRAILER, LOAD_TRAILER, INSTANCE_TRAILER})


def returned_trailers(
    metadata: Sequence[tuple[str, str | bytes]] | None, instance_id: str
) -> Metadata:
    """A worker's trailers as the caller gets them, naming the instance that answered."""
    kept = [(k, v) for k, v in metadata or () if k not in _NOT_RETURNED]
    kept.append((INSTANCE_TRAILER, instance_id))
    return tuple(kept)


class Router:
    """The instance table and the choice of instance; fed by a registry watch. `routes` changes
    only through the watch (`_upsert`, `_remove`), which renews what each call reads of it."""

    def __init__(
        self,
        source: RegistryClient,
        settings: GatewaySection | None = None,
        probe_health: bool = True,
        *,
        policy: PickPolicy | None = None,
    ) -> None:
        self.source = source
        self.settings = settings or GatewaySection()
        self.policy = policy if policy is not None else LeastLoaded()
        self.routes: dict[str, Route] = {}
        # When each model was last served by some instance: such a model is "not ready", not
        # unknown.
        self._last_served: dict[str, float] = {}
        # What every call reads of the table, made again only after it changed (`_changed`): the
        # models of the table and of `_last_served` (a metrics label names only these), and the
        # instances serving each model, in table order.
        self._known: frozenset[str] | None = None
        self._serving: dict[str, list[Route]] = {}
        self._channels: dict[str, tuple[grpc.aio.Channel, int]] = {}
        self._probe_health = probe_health
        self._follower: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._stale: dict[str, asyncio.TimerHandle] = {}
        # When the last snapshot arrived: for `settle_s` after it, workers may still be registering
        # (the source restarted with the gateway), so a model nobody serves is not yet unknown.
        self._snapshot_at = 0.0
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
                    logger.warning(
                        "lost the instance source %s (%s); routing on the last known instances, "
                        "retrying",
                        self.source,
                        error or type(error).__name__,
                    )
                    lost = True
            await backoff.wait()

    async def _apply(self, batch: WatchBatch) -> None:
        if batch.snapshot:
            current = {e.instance.instance_id for e in batch.events}
            for gone in set(self.routes) - current:
                if not self.synced.is_set():
                    self._remove(gone)
                elif gone not in self._stale:
                    # A later snapshot (the source restarted) may not have every worker back yet:
                    # keep routing to the missing ones (health permitting) for a lease TTL before
                    # dropping them.
                    self._stale[gone] = asyncio.get_running_loop().call_later(
                        STALE_GRACE_S, self._remove, gone
                    )
        for event in batch.events:
            if event.type is EventType.REMOVED:
                self._remove(event.instance.instance_id)
            else:
                self._upsert(event.instance)
        if batch.snapshot:
            self._snapshot_at = time.monotonic()
            self.synced.set()
        await self._notify()

    def _changed(self) -> None:
        self._known = None
        self._serving.clear()

    def _upsert(self, instance: Instance) -> None:
        self._changed()  # a registration may name other models
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
            logger.info(
                "instance %s at %s serves %s",
                instance.instance_id,
                instance.address,
                ", ".join(instance.spec.model_names),
            )
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
        self._changed()
        now = time.monotonic()
        self._last_served.update((model, now) for model in route.instance.spec.model_names)
        logger.info("instance %s at %s left", instance_id, route.instance.address)
        if route.probe_task is not None:
            route.probe_task.cancel()
        self._release(route.instance.address)

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel, users = self._channels.get(address, (None, 0))
        if channel is None:
            settings = self.settings
            channel = dial(
                address,
                settings.workers.tls,
                settings.workers.token,
                client_options(settings.keepalive_time_s, settings.keepalive_timeout_s),
            )
        self._channels[address] = (channel, users + 1)
        return channel

    def _release(self, address: str) -> None:
        """Closes an address's channel once no instance uses it; calls still open on it finish
        first."""
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
                logger.info(
                    "instance %s at %s: health %s",
                    route.instance_id,
                    route.instance.address,
                    {True: "SERVING", False: "NOT_SERVING or unreachable", None: "unknown"}[
                        serving
                    ],
                )
            route.probe = serving
            asyncio.get_running_loop().create_task(self._notify())

        await follow_health(route.channel, mark)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    # -- choosing ----------------------------------------------------------------------------------

    def untried(self, model: str, tried: set[str]) -> bool:
        """Whether another instance of `model` is left to try."""
        return any(
            r.instance.spec.serves(model) and r.instance_id not in tried
            for r in self.routes.values()
        )

    def known_models(self) -> frozenset[str]:
        """The models some instance serves or served: what a metrics label may name. A pick adds
        to `_last_served` only a model the table names, so only the table's changes renew it."""
        known = self._known
        if known is None:
            known = self._known = frozenset(
                {m for r in self.routes.values() for m in r.instance.spec.model_names}
            ).union(self._last_served)
        return known

    def pick(self, model: str, tried: set[str]) -> Route:
        now = time.monotonic()
        serving = self._serving.get(model)
        if serving is None:
            serving = [r for r in self.routes.values() if r.instance.spec.serves(model)]
            if serving:  # a model nobody serves is not kept: callers may name any
                self._serving[model] = serving
        if not serving:
            self._refuse_missing(model, now)
        self._last_served[model] = now
        candidates = [r for r in serving if r.instance_id not in tried] if tried else serving
        if len(candidates) > 1:
            # The healthy ones; when none is, the others rather than a refusal (health may lag).
            candidates = [r for r in candidates if r.routable] or candidates
        if not candidates:
            raise NotReady(
                f"every instance of model {model!r} was tried and is unavailable", NOT_READY_RETRY_S
            )
        return self.policy.pick(candidates, lambda r: r.load(model, now))

    def _refuse_missing(self, model: str, now: float) -> None:
        if not self.synced.is_set():
            raise NotReady(
                f"the gateway has no instance table from {self.source} yet; retry shortly",
                NOT_READY_RETRY_S,
            )
        served_at = self._last_served.get(model)
        if served_at is not None and now - served_at <= self.settings.recently_served_s:
            raise NotReady(
                f"no instance of model {model!r} is registered right now (it was "
                f"{now - served_at:.0f}s ago)",
                NOT_READY_RETRY_S,
            )
        if now - self._snapshot_at < self.settings.settle_s:
            raise NotReady(
                f"no instance of model {model!r} yet: the instance table from {self.source} is "
                f"{now - self._snapshot_at:.0f}s old and workers may still be registering",
                NOT_READY_RETRY_S,
            )
        known = sorted({m for r in self.routes.values() for m in r.instance.spec.model_names})
        raise ModelNotFound(model, known)

    def instances(self) -> list[Route]:
        return list(self.routes.values())
