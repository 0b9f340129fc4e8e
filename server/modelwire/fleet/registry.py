"""The registry's contract, shared by every process of a fleet.

Three roles, so a backend can be swapped without touching its users:
- `Registrar`: what a worker's registration agent calls (register, heartbeat, deregister).
- `InstanceSource`: what the gateway reads (a snapshot, then changes).
- `Registry`: both, plus listing and health marks; what the ModelController service serves.
`controller/memory.py` is the embedded one, `fleet/etcd.py` keeps the same contract in etcd, and
`fleet/remote.py` is a Registrar and InstanceSource that talks to a controller over gRPC;
`fleet/connect.py` picks one for a worker, a gateway or `modelwire instances`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import Protocol

from modelwire.core.addresses import instance_address
from modelwire.core.errors import FieldViolation, InvalidRequest
from modelwire.fleet.types import (
    EventType,
    Instance,
    InstanceEvent,
    InstanceSpec,
    Lease,
    ModelLoad,
    WatchBatch,
    valid_instance_id,
)

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
        """A snapshot batch first, then deltas; raises when the source is lost (the caller
        re-watches)."""
        ...


class RegistryClient(Registrar, InstanceSource, Protocol):
    """A registry across the network (a controller, or etcd): both sides, and a connection to
    close."""

    async def close(self) -> None: ...


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
    def owner_of(self, instance_id: str) -> str | None:
        """The identity that registered `instance_id`, or None when no such instance is known."""

    @abstractmethod
    def instances(self, model: str = "", healthy_only: bool = False) -> list[Instance]:
        """The current instances (of `model`, if given), ordered by id."""

    @abstractmethod
    def watch(self, model: str = "") -> AsyncIterator[WatchBatch]: ...

    @abstractmethod
    def mark_probe(self, instance_id: str, serving: bool | None) -> None:
        """Records an active health check's verdict (None: not known yet)."""


# What one registration may hold: the whole fleet travels in one snapshot message to every
# watcher (4 MiB at most), so no registrant can make it too large to read.
MAX_MODELS = 64
MAX_MODEL_NAME = 256
MAX_LABELS = 32
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
# Characters of one registration in all (address, model names, labels): 256 instances of this
# size fit in a few MiB.
MAX_SPEC_CHARS = 8192


def _printable(text: str) -> bool:
    """No control characters: names and labels end up in log lines, one per line."""
    return text.isprintable()


def check_spec(spec: InstanceSpec) -> InstanceSpec:
    """Validates a registration and fills in an id when none was proposed."""
    violations = []
    if spec.instance_id and not valid_instance_id(spec.instance_id):
        violations.append(
            FieldViolation("instance_id", "letters, digits, '-', '_' and '.' only, at most 128")
        )
    try:
        instance_address(spec.address)
    except ValueError as bad:
        violations.append(FieldViolation("address", f"{bad}; an address callers can dial"))
    if not spec.models:
        violations.append(FieldViolation("models", "must name at least one model"))
    if len(spec.models) > MAX_MODELS:
        violations.append(
            FieldViolation(
                "models", f"at most {MAX_MODELS} models per instance, got {len(spec.models)}"
            )
        )
    for index, model in enumerate(spec.models[:MAX_MODELS]):
        name = model.model
        if not name or "/" in name or len(name) > MAX_MODEL_NAME or not _printable(name):
            violations.append(
                FieldViolation(
                    f"models[{index}].model",
                    f"must be 1 to {MAX_MODEL_NAME} printable characters without '/'",
                )
            )
        if model.capacity < 0:
            violations.append(FieldViolation(f"models[{index}].capacity", "must not be negative"))
    if spec.weight < 0:
        violations.append(FieldViolation("weight", "must not be negative"))
    if len(spec.labels) > MAX_LABELS:
        violations.append(
            FieldViolation("labels", f"at most {MAX_LABELS} labels, got {len(spec.labels)}")
        )
    elif any(
        not key
        or len(key) > MAX_LABEL_KEY
        or len(value) > MAX_LABEL_VALUE
        or not _printable(key)
        or not _printable(value)
        for key, value in spec.labels.items()
    ):
        violations.append(
            FieldViolation(
                "labels",
                f"keys of 1 to {MAX_LABEL_KEY} and values of at most {MAX_LABEL_VALUE} printable "
                "characters",
            )
        )
    size = (
        len(spec.address)
        + sum(len(m.model) for m in spec.models)
        + sum(len(k) + len(v) for k, v in spec.labels.items())
    )
    if size > MAX_SPEC_CHARS:
        violations.append(
            FieldViolation(
                "labels", f"the registration holds {size} characters, at most {MAX_SPEC_CHARS}"
            )
        )
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
                logger.warning(
                    "a registry watcher fell %d batches behind; cutting it off", WATCH_BACKLOG
                )
                del self._watchers[key]
                queue.put_nowait(None)
                continue
            queue.put_nowait(mine)

    async def watch(
        self, model: str, snapshot: Callable[[], list[Instance]]
    ) -> AsyncIterator[WatchBatch]:
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
