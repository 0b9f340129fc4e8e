import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LimitKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIMIT_KIND_UNSPECIFIED: _ClassVar[LimitKind]
    LIMIT_KIND_REQUESTS_PER_MINUTE: _ClassVar[LimitKind]
    LIMIT_KIND_TOKENS_PER_MINUTE: _ClassVar[LimitKind]
    LIMIT_KIND_CONCURRENT_CALLS: _ClassVar[LimitKind]
    LIMIT_KIND_BUDGET_PER_DAY: _ClassVar[LimitKind]
    LIMIT_KIND_BUDGET_PER_MONTH: _ClassVar[LimitKind]
LIMIT_KIND_UNSPECIFIED: LimitKind
LIMIT_KIND_REQUESTS_PER_MINUTE: LimitKind
LIMIT_KIND_TOKENS_PER_MINUTE: LimitKind
LIMIT_KIND_CONCURRENT_CALLS: LimitKind
LIMIT_KIND_BUDGET_PER_DAY: LimitKind
LIMIT_KIND_BUDGET_PER_MONTH: LimitKind

class GetUsageRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("rules", "store", "store_available")
    RULES_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    STORE_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[RuleUsage]
    store: str
    store_available: bool
    def __init__(self, rules: _Optional[_Iterable[_Union[RuleUsage, _Mapping]]] = ..., store: _Optional[str] = ..., store_available: _Optional[bool] = ...) -> None: ...

class RuleUsage(_message.Message):
    __slots__ = ("rule", "tenant", "model", "limits")
    RULE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    rule: int
    tenant: str
    model: str
    limits: _containers.RepeatedCompositeFieldContainer[LimitUsage]
    def __init__(self, rule: _Optional[int] = ..., tenant: _Optional[str] = ..., model: _Optional[str] = ..., limits: _Optional[_Iterable[_Union[LimitUsage, _Mapping]]] = ...) -> None: ...

class LimitUsage(_message.Message):
    __slots__ = ("kind", "used", "limit", "resets_in")
    KIND_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    RESETS_IN_FIELD_NUMBER: _ClassVar[int]
    kind: LimitKind
    used: float
    limit: float
    resets_in: _duration_pb2.Duration
    def __init__(self, kind: _Optional[_Union[LimitKind, str]] = ..., used: _Optional[float] = ..., limit: _Optional[float] = ..., resets_in: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
