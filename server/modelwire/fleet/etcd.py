"""The etcd registry: instances are keys under a lease, written exactly as etcd's own
`go.etcd.io/etcd/client/v3/naming/endpoints.Manager` writes them, so a Go service dials
`etcd:///<prefix>/<model>` with etcd's resolver and needs no modelwire code.

- Key: `<prefix>/<model>/<instance-id>` (no leading '/': the resolver strips one from the dial
  target and lists `<target>/`). One key per served model, all under the instance's one lease.
- Value: the JSON of etcd's internal `endpoints.Update`:
  `{"Op":0,"Addr":"host:port","Metadata":...}`. `Metadata` is a JSON *string* (holding instance id,
  weight, capacity, labels), not an object: grpc-go compares `resolver.Address.Metadata` with `==`,
  and the map an object decodes to panics there ("comparing uncomparable type
  map[string]interface {}", etcd-io/etcd#19700, grpc/grpc-go#8225).
- The lease TTL is the heartbeat timeout and keep-alive is the heartbeat: the registration agent
  refreshes every TTL/3 (`heartbeat`); when the lease is gone (expired, or etcd lost its data) it
  registers again, which grants a new lease and puts the keys again. Deregistering revokes the
  lease.

The etcd client is `aetcd` (native grpc.aio). Its lease refresh is one LeaseKeepAlive round trip per
call, which is what a heartbeat is here; its watch ends on a broken stream, after which `_follow`
lists and watches again from a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aetcd
import aetcd.rpc
import aetcd.rtypes
import aetcd.watcher

from modelwire.core.addresses import MIN_TTL_S, EtcdTarget
from modelwire.core.backoff import Backoff
from modelwire.core.errors import RegistryUnavailable
from modelwire.core.settings import RegistryAccess
from modelwire.fleet.registry import DEFAULT_TTL_S, Registry, WatchHub, check_spec
from modelwire.fleet.types import (
    EventType,
    Instance,
    InstanceEvent,
    InstanceModel,
    InstanceSpec,
    Lease,
    ModelLoad,
    WatchBatch,
)
from modelwire.rpc.channels import client_options, dial

logger = logging.getLogger(__name__)

# etcd's smallest lease TTL with its default election timeout (1 s) is 2 s; TTLs are whole seconds.
CALL_TIMEOUT_S = 3.0


def endpoint_value(spec: InstanceSpec, model: str) -> bytes:
    """The value etcd's endpoints.Manager would write for AddEndpoint(key, Endpoint{Addr,
    Metadata})."""
    metadata = {
        "instance_id": spec.instance_id,
        "weight": spec.weight,
        "capacity": spec.capacity(model),
        "labels": spec.labels,
        "owner": spec.owner,
    }
    return json.dumps(
        {
            "Op": 0,
            "Addr": spec.address,
            "Metadata": json.dumps(metadata, sort_keys=True, separators=(",", ":")),
        },
        separators=(",", ":"),
    ).encode()


def parse_endpoint(value: bytes) -> tuple[str, dict[str, Any]] | None:
    """Addr and metadata of a stored endpoint; None if it is not one (etcd's resolver skips those
    too)."""
    try:
        update = json.loads(value)
        address = update["Addr"]
        metadata = update.get("Metadata")
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        return str(address), metadata if isinstance(metadata, dict) else {}
    except (ValueError, KeyError, TypeError):
        return None


class _TlsClient(aetcd.Client):  # type: ignore[misc]
    """aetcd's client, dialling etcd over TLS (mTLS with a client certificate): aetcd itself only
    opens plaintext channels. `connect` does what aetcd's does, on a secure channel."""

    tls: Any = None
    _is_connecting: bool

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        self._is_connecting = True
        try:
            self.channel = dial(
                f"{self._host}:{self._port}", self.tls, options=list(self._options.items())
            )
            if self._username is not None:
                self.auth_stub = aetcd.rpc.AuthStub(self.channel)
                reply = await self.auth_stub.Authenticate(
                    aetcd.rpc.AuthenticateRequest(name=self._username, password=self._password),
                    timeout=self._timeout,
                )
                self.metadata = (("token", reply.token),)
            self.kvstub = aetcd.rpc.KVStub(self.channel)
            self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
            self.leasestub = aetcd.rpc.LeaseStub(self.channel)
            self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(
                aetcd.rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False


class EtcdUnavailable(RegistryUnavailable, ConnectionError):
    pass


@dataclass
class _Registration:
    spec: InstanceSpec
    lease_id: int


class EtcdRegistry(Registry):
    """A Registry (controller), Registrar (worker agent) and InstanceSource (gateway) on etcd."""

    def __init__(
        self, target: EtcdTarget, ttl_s: float = DEFAULT_TTL_S, access: RegistryAccess | None = None
    ) -> None:
        self.target = target
        self._access = access or RegistryAccess()
        self.ttl = max(MIN_TTL_S, math.ceil(ttl_s))
        self._endpoint = 0
        self._client = self._new_client()
        self._registrations: dict[str, _Registration] = {}
        self._load: dict[str, dict[str, ModelLoad]] = {}
        self._probes: dict[str, bool | None] = {}
        self._cache: dict[str, Instance] = {}
        self._hub = WatchHub()
        self._follower: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()

    @classmethod
    def from_url(
        cls, url: str, ttl_s: float = DEFAULT_TTL_S, access: RegistryAccess | None = None
    ) -> EtcdRegistry:
        """A `?ttl=SECONDS` in the URL wins over `ttl_s`; `access` has etcd's user and TLS."""
        target = EtcdTarget.parse(url)
        return cls(target, target.ttl_s or ttl_s, access)

    def __str__(self) -> str:
        return str(self.target)

    @property
    def root(self) -> str:
        return self.target.prefix + "/"

    def key(self, model: str, instance_id: str) -> str:
        return f"{self.target.prefix}/{model}/{instance_id}"

    # -- the etcd client ---------------------------------------------------------------------------

    def _new_client(self) -> Any:
        host, port = self.target.endpoints[self._endpoint % len(self.target.endpoints)]
        access = self._access
        kind = _TlsClient if access.tls is not None else aetcd.Client
        client = kind(
            host,
            port,
            username=access.etcd_username,
            password=access.etcd_password,
            timeout=CALL_TIMEOUT_S,
            options=dict(client_options()),
        )
        if access.tls is not None:
            client.tls = access.tls
        return client

    async def _failover(self, error: BaseException) -> EtcdUnavailable:
        """With several endpoints, the next call goes to the next one."""
        if len(self.target.endpoints) > 1:
            old = self._client
            self._endpoint += 1
            self._client = self._new_client()
            with contextlib.suppress(Exception):
                await old.close()
        return EtcdUnavailable(f"{self}: {error or type(error).__name__}")

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await getattr(self._client, name)(*args, **kwargs)
        except aetcd.exceptions.ClientError as error:
            if isinstance(
                error,
                aetcd.exceptions.InvalidArgumentError | aetcd.exceptions.PreconditionFailedError,
            ):
                raise
            raise await self._failover(error) from error
        except (OSError, TimeoutError) as error:
            raise await self._failover(error) from error

    # -- Registrar ---------------------------------------------------------------------------------

    async def register(self, spec: InstanceSpec) -> Lease:
        spec = check_spec(spec)
        lease = await self._call("lease", self.ttl)
        puts = [
            self._client.transactions.put(
                self.key(m.model, spec.instance_id).encode(),
                endpoint_value(spec, m.model),
                lease=lease.id,
            )
            for m in spec.models
        ]
        await self._call("transaction", compare=[], success=puts, failure=[])
        previous = self._registrations.get(spec.instance_id)
        self._registrations[spec.instance_id] = _Registration(spec, lease.id)
        if previous is not None:
            # The keys now belong to the new lease; the old one (if etcd still has it) holds
            # nothing.
            with contextlib.suppress(Exception):
                await self._call("revoke_lease", previous.lease_id)
        logger.info(
            "registered %s (%s) in %s under lease %x, TTL %ds",
            spec.instance_id,
            spec.address,
            self,
            lease.id,
            self.ttl,
        )
        return Lease(spec.instance_id, float(self.ttl), self.ttl / 3)

    async def heartbeat(self, instance_id: str, load: Mapping[str, ModelLoad]) -> bool:
        """One keep-alive of the instance's lease; False when the lease is gone (register again)."""
        registration = self._registrations.get(instance_id)
        if registration is None:
            return False
        reply = await self._call("refresh_lease", registration.lease_id)
        if reply is None or reply.TTL <= 0:
            self._registrations.pop(instance_id, None)
            return False
        if dict(load) != self._load.get(instance_id):
            self._load[instance_id] = dict(load)
            self._publish_local(instance_id)
        return True

    async def deregister(self, instance_id: str) -> bool:
        """Revokes the lease, which deletes every key of the instance at once."""
        registration = self._registrations.get(instance_id)
        if registration is None:
            return False
        # Forgotten only once etcd has revoked it: a deregistration that failed can be retried.
        await self._call("revoke_lease", registration.lease_id)
        self._registrations.pop(instance_id, None)
        self._load.pop(instance_id, None)
        logger.info("deregistered %s from %s", instance_id, self)
        return True

    # -- Registry (the controller's view) and InstanceSource (a gateway's) -------------------------

    async def start(self) -> None:
        if self._follower is None:
            self._follower = asyncio.create_task(
                self._follow(), name=f"etcd-watch-{self.target.prefix}"
            )

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        self._hub.close()
        with contextlib.suppress(Exception):
            await self._client.close()

    def owner_of(self, instance_id: str) -> str | None:
        registration = self._registrations.get(instance_id)
        if registration is not None:
            return registration.spec.owner
        instance = self._cache.get(instance_id)
        return None if instance is None else instance.spec.owner

    def instances(self, model: str = "", healthy_only: bool = False) -> list[Instance]:
        return [
            instance
            for _, instance in sorted(self._cache.items())
            if (not model or instance.spec.serves(model)) and (instance.healthy or not healthy_only)
        ]

    async def watch(self, model: str = "") -> AsyncGenerator[WatchBatch, None]:
        await self.start()
        try:
            await asyncio.wait_for(self._synced.wait(), CALL_TIMEOUT_S * 2)
        except TimeoutError:
            raise EtcdUnavailable(f"{self}: no snapshot of the instances yet") from None
        async for batch in self._hub.watch(model, lambda: self.instances(model)):
            yield batch

    def mark_probe(self, instance_id: str, serving: bool | None) -> None:
        if self._probes.get(instance_id) == serving:
            return
        self._probes[instance_id] = serving
        self._publish_local(instance_id)

    def _publish_local(self, instance_id: str) -> None:
        """A local change (load from a heartbeat, a probe verdict) of a cached instance."""
        instance = self._cache.get(instance_id)
        if instance is None:
            return
        updated = self._decorate(instance)
        if updated != instance:
            self._cache[instance_id] = updated
            self._hub.publish([InstanceEvent(EventType.UPDATED, updated)])

    def _decorate(self, instance: Instance) -> Instance:
        return replace(
            instance,
            load=dict(self._load.get(instance.instance_id, {})),
            healthy=self._probes.get(instance.instance_id) is not False,
        )

    async def _follow(self) -> None:
        """Mirrors `<prefix>/` into the cache: list, then watch from the next revision; again on
        loss."""
        lost = False
        backoff = Backoff(max_s=1.0)
        while True:
            try:
                async for endpoints in self._etcd_watch():
                    self._apply(endpoints)
                    self._synced.set()
                    backoff.reset()
                    if lost:
                        logger.info("%s is reachable again", self)
                        lost = False
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not lost:
                    logger.warning(
                        "lost the watch on %s (%s); listing and watching again",
                        self,
                        error or type(error).__name__,
                    )
                    lost = True
            await backoff.wait()

    async def _etcd_watch(self) -> AsyncIterator[dict[str, tuple[str, str, dict[str, Any]]]]:
        """Yields the complete set of endpoints {key: (model, address, metadata)} after every
        change."""
        root = self.root.encode()
        listed = await self._call("get_prefix", root)
        endpoints: dict[str, tuple[str, str, dict[str, Any]]] = {}
        for kv in listed:
            self._put(endpoints, kv.key, kv.value)
        yield dict(endpoints)
        watch = await self._call("watch_prefix", root, start_revision=listed.header.revision + 1)
        try:
            async for event in watch:
                if event.kind == aetcd.rtypes.EventKind.PUT:
                    self._put(endpoints, event.kv.key, event.kv.value)
                else:
                    endpoints.pop(event.kv.key.decode(), None)
                yield dict(endpoints)
        finally:
            with contextlib.suppress(Exception):
                await watch.cancel()
        raise EtcdUnavailable(f"{self}: the watch ended")

    def _put(
        self, endpoints: dict[str, tuple[str, str, dict[str, Any]]], key: bytes, value: bytes
    ) -> None:
        name = key.decode()
        model, sep, instance_id = name[len(self.root) :].rpartition("/")
        parsed = parse_endpoint(value)
        if not sep or not model or parsed is None:
            return
        endpoints[name] = (model, parsed[0], parsed[1] | {"instance_id": instance_id})

    def _apply(self, endpoints: dict[str, tuple[str, str, dict[str, Any]]]) -> None:
        """Rebuilds instances from endpoints and publishes the difference to the cache."""
        grouped: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
        for model, address, metadata in endpoints.values():
            grouped.setdefault(str(metadata["instance_id"]), []).append((model, address, metadata))
        fresh: dict[str, Instance] = {}
        for instance_id, entries in grouped.items():
            entries.sort()
            _, address, metadata = entries[0]
            labels = metadata.get("labels")
            spec = InstanceSpec(
                instance_id=instance_id,
                address=address,
                models=tuple(
                    InstanceModel(model, int(meta.get("capacity") or 0))
                    for model, _, meta in entries
                ),
                weight=int(metadata.get("weight") or 1),
                labels={str(k): str(v) for k, v in labels.items()}
                if isinstance(labels, dict)
                else {},
                owner=str(metadata.get("owner") or ""),
            )
            fresh[instance_id] = self._decorate(Instance(spec))
        events = [
            InstanceEvent(EventType.REMOVED, old)
            for key, old in self._cache.items()
            if key not in fresh
        ]
        for key, instance in fresh.items():
            old = self._cache.get(key)
            if old is None:
                events.append(InstanceEvent(EventType.ADDED, instance))
            elif old != instance:
                events.append(InstanceEvent(EventType.UPDATED, instance))
        self._cache = fresh
        for gone in [e.instance.instance_id for e in events if e.type is EventType.REMOVED]:
            self._probes.pop(gone, None)
        if events:
            self._hub.publish(events)
