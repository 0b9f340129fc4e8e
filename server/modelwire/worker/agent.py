"""The worker's registration agent: register at start, heartbeat with live load, register again when
the registry forgot us, deregister on graceful shutdown, and keep serving while the registry is
away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace

from modelwire.core.addresses import host_of, is_loopback
from modelwire.core.backoff import Backoff
from modelwire.core.errors import (
    InvalidRequest,
    ModelwireError,
    PermissionDenied,
    StartupFailure,
)
from modelwire.core.settings import RegistrationConfig, RegistryAccess
from modelwire.fleet.connect import connect
from modelwire.fleet.registry import RegistryClient
from modelwire.fleet.types import InstanceModel, InstanceSpec, Lease, ModelLoad
from modelwire.rpc.auth import Unauthenticated
from modelwire.rpc.wire import ID_TAKEN
from modelwire.worker.deployments import Target

logger = logging.getLogger(__name__)

INITIAL_BACKOFF_S = 0.25
MAX_BACKOFF_S = 5.0
DEREGISTER_TIMEOUT_S = 2.0


class RegistrationAgent:
    """Keeps one instance registered for as long as the worker serves.

    `load()` is read at every heartbeat. The agent never stops the worker: while the registry is
    unreachable it logs once, retries with exponential backoff (up to MAX_BACKOFF_S) and logs again
    when it is back.
    """

    def __init__(
        self,
        registrar: RegistryClient,
        spec: InstanceSpec,
        load: Callable[[], Mapping[str, ModelLoad]],
        *,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self.registrar = registrar
        self.spec = replace(spec, instance_id=spec.instance_id or new_instance_id())
        self._load = load
        self._max_backoff_s = max_backoff_s
        self.lease: Lease | None = None
        self.registrations = 0
        self.registered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def instance_id(self) -> str:
        return self.spec.instance_id

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"registration-{self.instance_id}")

    async def stop(self) -> None:
        """Deregisters (bounded by DEREGISTER_TIMEOUT_S, so a dead registry cannot hold up
        shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.lease is not None:
            try:
                await asyncio.wait_for(
                    self.registrar.deregister(self.lease.instance_id), DEREGISTER_TIMEOUT_S
                )
                logger.info("deregistered %s from %s", self.instance_id, self.registrar)
            except Exception as error:  # the lease lapses on its own
                logger.warning(
                    "could not deregister %s from %s (%s); its lease will lapse",
                    self.instance_id,
                    self.registrar,
                    error or type(error).__name__,
                )
            self.lease = None
            self.registered.clear()
        await self.registrar.close()

    async def _run(self) -> None:
        # Never back off longer than a heartbeat interval: a registry that comes back (a restarted
        # etcd that lost our lease) must see us again within one TTL.
        backoff = Backoff(INITIAL_BACKOFF_S, self._max_backoff_s)
        unreachable = False
        while True:
            try:
                if self.lease is None:
                    self.lease = await self.registrar.register(self.spec)
                    self.spec = replace(self.spec, instance_id=self.lease.instance_id)
                    self.registrations += 1
                    self.registered.set()
                    backoff.max_s = min(self._max_backoff_s, self.lease.heartbeat_interval_s)
                    logger.info(
                        "registered %s (%s) with %s: lease %.1fs, heartbeat every %.1fs",
                        self.instance_id,
                        self.spec.address,
                        self.registrar,
                        self.lease.ttl_s,
                        self.lease.heartbeat_interval_s,
                    )
                elif not await self.registrar.heartbeat(self.lease.instance_id, self._load()):
                    logger.warning(
                        "%s no longer knows %s (restarted, or the lease lapsed); registering again",
                        self.registrar,
                        self.instance_id,
                    )
                    self.lease = None
                    self.registered.clear()
                    continue
                if unreachable:
                    logger.info("%s is reachable again", self.registrar)
                    unreachable = False
                backoff.reset()
                await asyncio.sleep(self.lease.heartbeat_interval_s)
            except asyncio.CancelledError:
                raise
            except InvalidRequest as error:
                logger.error(
                    "%s refused the registration of %s: %s",
                    self.registrar,
                    self.instance_id,
                    refusal_text(error),
                )
                await asyncio.sleep(self._max_backoff_s)
            except (PermissionDenied, Unauthenticated) as refusal:
                # The registry is reachable and says no: said every time, since nothing works
                # until it changes.
                logger.warning(
                    "%s refused %s: %s", self.registrar, self.instance_id, refusal_text(refusal)
                )
                if isinstance(refusal, PermissionDenied) and refusal.reason == ID_TAKEN:
                    # Another identity holds our id (it registered it while the controller had
                    # forgotten us): keep serving under a new one.
                    self.spec = replace(self.spec, instance_id=new_instance_id())
                    self.lease = None
                    self.registered.clear()
                    logger.warning("registering again as %s", self.instance_id)
                    continue
                await asyncio.sleep(self._max_backoff_s)
            except Exception as error:
                unreachable = self._unreachable(error, unreachable, backoff)
                await backoff.wait()

    def _unreachable(self, error: BaseException, already: bool, backoff: Backoff) -> bool:
        if not already:
            logger.warning(
                "%s is unreachable (%s); still serving, retrying with backoff up to %.1fs",
                self.registrar,
                describe(error),
                backoff.max_s,
            )
        else:
            logger.debug("%s still unreachable: %s", self.registrar, describe(error))
        return True


def describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


def refusal_text(error: ModelwireError) -> str:
    """A registry's refusal for the log, with the status it carries (operators grep for it)."""
    return f"{error.code}: {error}"


def new_instance_id() -> str:
    """Readable and unique: the host's name and a random suffix."""
    host = (
        "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:40]
        or "worker"
    )
    return f"{host}-{uuid.uuid4().hex[:12]}"


def advertised_address(listen_host: str, port: int, advertise: str | None) -> str:
    """The address callers dial: --advertise, else the listen address (a wildcard becomes the host
    name)."""
    if advertise:
        return advertise
    if listen_host in ("", "0.0.0.0", "::", "[::]"):
        return f"{socket.getfqdn()}:{port}"
    return f"{listen_host}:{port}"


def check_reachable(address: str, access: RegistryAccess, registration: RegistrationConfig) -> None:
    """A loopback address in a registry on another host sends its callers to their own machine."""
    registry = access.controller or (access.etcd or "").removeprefix("etcd://").split("/")[0]
    remote = not all(is_loopback(host_of(item)) for item in registry.split(","))
    if remote and is_loopback(host_of(address)) and not registration.allow_loopback:
        raise StartupFailure(
            f"the worker would register {address} with {registry}, on another host: nobody there "
            "can dial it. Listen on a routable address, set --advertise HOST:PORT ([registration] "
            "advertise), or set [registration] allow_loopback = true"
        )


def worker_agent(
    access: RegistryAccess,
    registration: RegistrationConfig,
    targets: Mapping[str, Target],
    listen_host: str,
    port: int,
) -> RegistrationAgent:
    """The agent of a worker serving `targets` (its models and routes), reading their
    deployments' admission counters as its load."""
    address = advertised_address(listen_host, port, registration.advertise)
    logger.info("this worker advertises %s", address)
    spec = InstanceSpec(
        instance_id="",
        address=address,
        models=tuple(
            InstanceModel(name, sum(d.admission.max_concurrency for d in target.deployments))
            for name, target in targets.items()
        ),
        weight=registration.weight,
        labels=dict(registration.labels),
    )

    def load() -> dict[str, ModelLoad]:
        return {
            name: ModelLoad(
                sum(d.admission.in_flight for d in target.deployments),
                sum(d.admission.queued for d in target.deployments),
            )
            for name, target in targets.items()
        }

    return RegistrationAgent(connect(access), spec, load)
