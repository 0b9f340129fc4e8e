import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HeartbeatStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEARTBEAT_STATUS_UNSPECIFIED: _ClassVar[HeartbeatStatus]
    HEARTBEAT_STATUS_OK: _ClassVar[HeartbeatStatus]
    HEARTBEAT_STATUS_UNKNOWN_INSTANCE: _ClassVar[HeartbeatStatus]

class InstanceEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTANCE_EVENT_TYPE_UNSPECIFIED: _ClassVar[InstanceEventType]
    INSTANCE_EVENT_TYPE_ADDED: _ClassVar[InstanceEventType]
    INSTANCE_EVENT_TYPE_UPDATED: _ClassVar[InstanceEventType]
    INSTANCE_EVENT_TYPE_REMOVED: _ClassVar[InstanceEventType]
HEARTBEAT_STATUS_UNSPECIFIED: HeartbeatStatus
HEARTBEAT_STATUS_OK: HeartbeatStatus
HEARTBEAT_STATUS_UNKNOWN_INSTANCE: HeartbeatStatus
INSTANCE_EVENT_TYPE_UNSPECIFIED: InstanceEventType
INSTANCE_EVENT_TYPE_ADDED: InstanceEventType
INSTANCE_EVENT_TYPE_UPDATED: InstanceEventType
INSTANCE_EVENT_TYPE_REMOVED: InstanceEventType

class InstanceModel(_message.Message):
    __slots__ = ("model", "capacity")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    capacity: int
    def __init__(self, model: _Optional[str] = ..., capacity: _Optional[int] = ...) -> None: ...

class ModelLoad(_message.Message):
    __slots__ = ("model", "in_flight", "queued")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    model: str
    in_flight: int
    queued: int
    def __init__(self, model: _Optional[str] = ..., in_flight: _Optional[int] = ..., queued: _Optional[int] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("instance_id", "address", "models", "weight", "labels", "load", "healthy", "last_heartbeat_time")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    address: str
    models: _containers.RepeatedCompositeFieldContainer[InstanceModel]
    weight: int
    labels: _containers.ScalarMap[str, str]
    load: _containers.RepeatedCompositeFieldContainer[ModelLoad]
    healthy: bool
    last_heartbeat_time: _timestamp_pb2.Timestamp
    def __init__(self, instance_id: _Optional[str] = ..., address: _Optional[str] = ..., models: _Optional[_Iterable[_Union[InstanceModel, _Mapping]]] = ..., weight: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., load: _Optional[_Iterable[_Union[ModelLoad, _Mapping]]] = ..., healthy: _Optional[bool] = ..., last_heartbeat_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegisterInstanceRequest(_message.Message):
    __slots__ = ("instance_id", "address", "models", "weight", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    address: str
    models: _containers.RepeatedCompositeFieldContainer[InstanceModel]
    weight: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, instance_id: _Optional[str] = ..., address: _Optional[str] = ..., models: _Optional[_Iterable[_Union[InstanceModel, _Mapping]]] = ..., weight: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RegisterInstanceResponse(_message.Message):
    __slots__ = ("instance_id", "lease_ttl", "heartbeat_interval")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    lease_ttl: _duration_pb2.Duration
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, instance_id: _Optional[str] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("instance_id", "load")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    load: _containers.RepeatedCompositeFieldContainer[ModelLoad]
    def __init__(self, instance_id: _Optional[str] = ..., load: _Optional[_Iterable[_Union[ModelLoad, _Mapping]]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: HeartbeatStatus
    def __init__(self, status: _Optional[_Union[HeartbeatStatus, str]] = ...) -> None: ...

class DeregisterInstanceRequest(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    def __init__(self, instance_id: _Optional[str] = ...) -> None: ...

class DeregisterInstanceResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class ListInstancesRequest(_message.Message):
    __slots__ = ("model", "healthy_only")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_ONLY_FIELD_NUMBER: _ClassVar[int]
    model: str
    healthy_only: bool
    def __init__(self, model: _Optional[str] = ..., healthy_only: _Optional[bool] = ...) -> None: ...

class ListInstancesResponse(_message.Message):
    __slots__ = ("instances",)
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    def __init__(self, instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ...) -> None: ...

class WatchInstancesRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class InstanceEvent(_message.Message):
    __slots__ = ("type", "instance")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    type: InstanceEventType
    instance: Instance
    def __init__(self, type: _Optional[_Union[InstanceEventType, str]] = ..., instance: _Optional[_Union[Instance, _Mapping]] = ...) -> None: ...

class WatchInstancesResponse(_message.Message):
    __slots__ = ("snapshot", "events")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    snapshot: bool
    events: _containers.RepeatedCompositeFieldContainer[InstanceEvent]
    def __init__(self, snapshot: _Optional[bool] = ..., events: _Optional[_Iterable[_Union[InstanceEvent, _Mapping]]] = ...) -> None: ...
