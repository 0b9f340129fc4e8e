"""Protobuf ⇄ registry domain types for the ModelController contract."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf import duration_pb2, timestamp_pb2

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
from modelwire.v1 import controller_pb2 as pb

_EVENT_TO_PB = {
    EventType.ADDED: pb.INSTANCE_EVENT_TYPE_ADDED,
    EventType.UPDATED: pb.INSTANCE_EVENT_TYPE_UPDATED,
    EventType.REMOVED: pb.INSTANCE_EVENT_TYPE_REMOVED,
}
_EVENT_FROM_PB = {value: key for key, value in _EVENT_TO_PB.items()}


def duration(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(int(seconds * 1e9))
    return message


def seconds(message: duration_pb2.Duration) -> float:
    return message.ToNanoseconds() / 1e9


def spec_from_register(request: pb.RegisterInstanceRequest) -> InstanceSpec:
    return InstanceSpec(
        instance_id=request.instance_id,
        address=request.address,
        models=tuple(InstanceModel(m.model, m.capacity) for m in request.models),
        weight=request.weight,
        labels=dict(request.labels),
    )


def register_request(spec: InstanceSpec) -> pb.RegisterInstanceRequest:
    return pb.RegisterInstanceRequest(
        instance_id=spec.instance_id,
        address=spec.address,
        models=[pb.InstanceModel(model=m.model, capacity=m.capacity) for m in spec.models],
        weight=spec.weight,
        labels=spec.labels,
    )


def lease_to_pb(lease: Lease) -> pb.RegisterInstanceResponse:
    return pb.RegisterInstanceResponse(
        instance_id=lease.instance_id,
        lease_ttl=duration(lease.ttl_s),
        heartbeat_interval=duration(lease.heartbeat_interval_s),
    )


def lease_from_pb(response: pb.RegisterInstanceResponse) -> Lease:
    return Lease(
        response.instance_id, seconds(response.lease_ttl), seconds(response.heartbeat_interval)
    )


def load_to_pb(load: Mapping[str, ModelLoad]) -> list[pb.ModelLoad]:
    return [
        pb.ModelLoad(model=name, in_flight=entry.in_flight, queued=entry.queued)
        for name, entry in sorted(load.items())
    ]


def load_from_pb(load: Iterable[pb.ModelLoad]) -> dict[str, ModelLoad]:
    return {entry.model: ModelLoad(max(0, entry.in_flight), max(0, entry.queued)) for entry in load}


def instance_to_pb(instance: Instance) -> pb.Instance:
    spec = instance.spec
    message = pb.Instance(
        instance_id=spec.instance_id,
        address=spec.address,
        models=[pb.InstanceModel(model=m.model, capacity=m.capacity) for m in spec.models],
        weight=spec.weight,
        labels=spec.labels,
        load=load_to_pb(instance.load),
        healthy=instance.healthy,
    )
    if instance.last_heartbeat:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromNanoseconds(int(instance.last_heartbeat * 1e9))
        message.last_heartbeat_time.CopyFrom(stamp)
    return message


def instance_from_pb(message: pb.Instance) -> Instance:
    spec = InstanceSpec(
        instance_id=message.instance_id,
        address=message.address,
        models=tuple(InstanceModel(m.model, m.capacity) for m in message.models),
        weight=message.weight or 1,
        labels=dict(message.labels),
    )
    last = (
        message.last_heartbeat_time.ToNanoseconds() / 1e9
        if message.HasField("last_heartbeat_time")
        else 0.0
    )
    return Instance(spec, load_from_pb(message.load), message.healthy, last)


def batch_to_pb(batch: WatchBatch) -> pb.WatchInstancesResponse:
    return pb.WatchInstancesResponse(
        snapshot=batch.snapshot,
        events=[
            pb.InstanceEvent(type=_EVENT_TO_PB[e.type], instance=instance_to_pb(e.instance))
            for e in batch.events
        ],
    )


def batch_from_pb(message: pb.WatchInstancesResponse) -> WatchBatch:
    return WatchBatch(
        message.snapshot,
        tuple(
            InstanceEvent(_EVENT_FROM_PB[e.type], instance_from_pb(e.instance))
            for e in message.events
            if e.type in _EVENT_FROM_PB
        ),
    )
