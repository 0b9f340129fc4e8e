"""What one call did, filled in by the interceptor (method, timing, status) and by the servicer
(the error class that chose the status); read by the log line and the metrics."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

from modelwire.core.settings import NO_TENANT
from modelwire.core.types import Usage

# Longer ids, any character outside printable ASCII and whitespace at either end are replaced: the
# id goes back in the trailers, where gRPC refuses such a value, a strict HTTP/2 client drops it, or
# the client's 8 KiB metadata limit drops the answer of a call that ran.
MAX_REQUEST_ID_CHARS = 128
# A request's RequestContext in its access line: each text cut at this many characters (control
# and other unprintable characters as "?"), at most this many metadata entries, in key order.
MAX_CONTEXT_CHARS = 128
MAX_CONTEXT_ENTRIES = 16


@dataclass(slots=True)
class CallRecord:
    method: str
    request_id: str
    model: str = ""
    started: float = field(default_factory=time.perf_counter)
    code: str = "OK"
    error_kind: str | None = None
    first_chunk_at: float | None = None
    last_chunk_at: float | None = None
    chunks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # The request's RequestContext (request_id, user, metadata), bounded, when it gave one.
    context: dict[str, object] | None = None
    # Who called (rpc/auth.py): the token's name and tenant, or the caller and tenant a relay
    # token relayed (`relayed_by` names that token); None when no one authenticated.
    caller: str | None = None
    tenant: str | None = None
    relayed_by: str | None = None
    # The tenant as a metrics label: one of this process's tenants, OTHER_TENANT or NO_TENANT.
    tenant_label: str = NO_TENANT
    # What a generation or an embedding was charged (worker/metering.py): None for other calls.
    cost: float | None = None
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    usage_estimated: bool = False
    # What each model that ran was charged, when the call was charged (the models of a route's
    # attempts): (model, usage, cost). The sums above are the call's. Tuples, grown by the rare
    # call that has any: most calls then allocate nothing for them.
    charges: tuple[tuple[str, Usage, float], ...] = ()
    # A call with a choice of deployments or models: each attempt as `model/deployment=outcome`
    # (worker/failover.py), and the model that answered.
    attempts: tuple[str, ...] = ()
    answered_by: str | None = None
    # The trailers the call's server adds (a worker's load report), made when asked: set by the
    # call pipeline, read by a failure's status (rpc/status.py CallScope).
    server_trailers: Callable[[], tuple[tuple[str, str | bytes], ...]] | None = None

    @property
    def latency_s(self) -> float:
        return time.perf_counter() - self.started


_current: ContextVar[CallRecord | None] = ContextVar("modelwire_call", default=None)


def current_call() -> CallRecord | None:
    return _current.get()


def sendable(value: str) -> bool:
    """Whether gRPC sends this text metadata value as it is: printable ASCII only. An incoming
    value may hold more (other HTTP/2 stacks send it and gRPC accepts it coming in)."""
    return value.isascii() and value.isprintable()


def _request_id(given: str | None) -> str:
    """The caller's request id if it can go back to the caller as it is, else a generated one."""
    # HTTP/2 forbids a value with whitespace at either end (RFC 9113 §8.2.1): strict clients drop
    # the answer.
    if given and len(given) <= MAX_REQUEST_ID_CHARS and sendable(given) and given == given.strip():
        return given
    # 128 random bits as 32 hex digits: what uuid4().hex gives but for its version bits, without
    # building a UUID object per call.
    return os.urandom(16).hex()


def begin_call(method: str, request_id: str | None) -> CallRecord:
    record = CallRecord(method=method, request_id=_request_id(request_id))
    _current.set(record)
    return record


def _loggable(value: str) -> str:
    """A caller's text as a log shows it: printable, at most MAX_CONTEXT_CHARS characters."""
    if not value.isprintable():
        value = "".join(char if char.isprintable() else "?" for char in value)
    return value if len(value) <= MAX_CONTEXT_CHARS else value[: MAX_CONTEXT_CHARS - 1] + "…"


def note_context(request_id: str, user: str, metadata: Mapping[str, str]) -> None:
    """Puts a request's RequestContext in its call's access line ("for logs", worker.proto)."""
    record = _current.get()
    if record is None:
        return
    context: dict[str, object] = {}
    if request_id:
        context["request_id"] = _loggable(request_id)
    if user:
        context["user"] = _loggable(user)
    if metadata:
        keys = sorted(metadata)
        logged = keys[:MAX_CONTEXT_ENTRIES]
        context["metadata"] = {_loggable(key): _loggable(metadata[key]) for key in logged}
        if len(keys) > MAX_CONTEXT_ENTRIES:
            context["metadata_omitted"] = len(keys) - MAX_CONTEXT_ENTRIES
    record.context = context or None


def note_charge(model: str, usage: Usage, cost: float) -> None:
    """Adds what `model` was charged for the call (one of its attempts) to its record: the access
    line and the spend metrics."""
    record = _current.get()
    if record is None:
        return
    if record.cost is None:
        record.prompt_tokens = record.completion_tokens = 0
        record.cost = 0.0
    record.charges += ((model, usage, cost),)
    record.prompt_tokens += usage.prompt_tokens
    record.completion_tokens += usage.completion_tokens
    record.cached_prompt_tokens += usage.cached_prompt_tokens
    record.cache_write_tokens += usage.cache_write_tokens
    record.reasoning_tokens += usage.reasoning_tokens
    record.usage_estimated = record.usage_estimated or usage.estimated
    record.cost += cost


def note_attempt(attempt: str) -> None:
    record = _current.get()
    if record is not None:
        record.attempts += (attempt,)


def note_answered_by(model: str) -> None:
    record = _current.get()
    if record is not None:
        record.answered_by = model


def note_error_kind(kind: str) -> None:
    record = _current.get()
    if record is not None:
        record.error_kind = kind
