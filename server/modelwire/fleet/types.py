"""Registry domain types: no grpc, no protobuf, no etcd."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def valid_instance_id(instance_id: str) -> bool:
    """Ids become the last segment of an etcd key, so they must not contain '/'."""
    return bool(_ID.fullmatch(instance_id)) and instance_id not in (".", "..")


@dataclass(frozen=True, slots=True)
class InstanceModel:
    model: str
    # Calls the instance runs at once for this model; 0 when unknown.
    capacity: int = 0


@dataclass(frozen=True, slots=True)
class ModelLoad:
    in_flight: int = 0
    queued: int = 0

    @property
    def total(self) -> int:
        return self.in_flight + self.queued


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """What a worker registers: where it listens and what it serves."""

    instance_id: str
    address: str
    models: tuple[InstanceModel, ...]
    weight: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    # The identity (token name) that registered it; only that identity may change it. "" without
    # auth.
    owner: str = ""

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.model for m in self.models)

    def serves(self, model: str) -> bool:
        return any(m.model == model for m in self.models)

    def capacity(self, model: str) -> int:
        return next((m.capacity for m in self.models if m.model == model), 0)


@dataclass(frozen=True, slots=True)
class Instance:
    """A registered instance as the registry sees it now."""

    spec: InstanceSpec
    load: dict[str, ModelLoad] = field(default_factory=dict)
    healthy: bool = True
    # Wall-clock time (time.time()) of the last registration or heartbeat; 0 when not tracked.
    last_heartbeat: float = 0.0

    @property
    def instance_id(self) -> str:
        return self.spec.instance_id

    @property
    def address(self) -> str:
        return self.spec.address

    def load_of(self, model: str) -> ModelLoad:
        return self.load.get(model, ModelLoad())


@dataclass(frozen=True, slots=True)
class Lease:
    """The answer to a registration: the id to heartbeat with, and how often."""

    instance_id: str
    ttl_s: float
    heartbeat_interval_s: float


class EventType(enum.Enum):
    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class InstanceEvent:
    type: EventType
    instance: Instance


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One message of a watch: the first is a snapshot (every current instance as ADDED)."""

    snapshot: bool
    events: tuple[InstanceEvent, ...]
