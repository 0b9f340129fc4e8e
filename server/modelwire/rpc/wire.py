"""The names on the wire between modelwire's processes and their callers, in one place: metadata
keys, trailers, the google.rpc.ErrorInfo domain and reasons, and the names of the services.

The service names are read from the protobuf descriptors, so a renamed package cannot leave a
hand-written copy behind. Under rpc/ because that is the lowest layer that may import the stubs
and that every user of these names may import (fleet/, worker/, gateway/, controller/, app/).
"""

from __future__ import annotations

from collections.abc import Sequence

from modelwire.v1 import usage_pb2, worker_pb2

# Metadata and trailers: (key, value) pairs as grpc.aio takes them.
Metadata = tuple[tuple[str, str | bytes], ...]

# The caller's request id, echoed in the trailers (generated when the caller sent none).
REQUEST_ID_KEY = "x-request-id"
# The answering process's pid: in every call's trailers, and in a worker's response headers once
# its work begins (a gateway then knows a lost call may have run).
PID_KEY = "modelwire-pid"
# What a gateway adds to each call it forwards: the gateways the call has passed, comma-separated
# (a gateway refuses a loop). A worker that sees it sends its response headers when the work
# begins (what a gateway needs to know whether a lost call may have run); direct callers are
# spared that extra frame.
VIA_KEY = "modelwire-via"
# The caller a gateway authenticated, and its tenant, relayed to the worker it calls: UTF-8,
# percent-encoded (rpc/auth.py). A server believes them only from a token with the `relay`
# permission; a gateway removes any its caller sent and sets its own.
CALLER_KEY = "modelwire-caller"
TENANT_KEY = "modelwire-tenant"

# ORCA's load report (fleet/orca.py); gRPC's C core consumes it, so the same report also travels
# as LOAD_TRAILER, which the modelwire gateway reads.
ORCA_TRAILER = "endpoint-load-metrics-bin"
LOAD_TRAILER = "modelwire-load-bin"
# The registered id of the worker that answered (a gateway also sends it in its headers).
INSTANCE_TRAILER = "modelwire-instance-id"
# A call with a choice of deployments or models: each attempt, `model/deployment=outcome`
# (percent-encoded names), comma-separated, in the order they were made (worker/failover.py).
ATTEMPTS_TRAILER = "modelwire-attempts"


# The attempts' text is bounded (a route of hundreds of members must not push a call's trailers
# past gRPC's 8 KiB metadata limit): the first items, "+N" for the N left out, the last item.
MAX_ATTEMPTS_CHARS = 2048


def attempts_text(attempts: Sequence[str]) -> str:
    text = ",".join(attempts)
    if len(text) <= MAX_ATTEMPTS_CHARS:
        return text
    last, kept, size = attempts[-1], [], 0
    budget = MAX_ATTEMPTS_CHARS - len(last) - 16
    for item in attempts[:-1]:
        if size + len(item) + 1 > budget:
            break
        kept.append(item)
        size += len(item) + 1
    return ",".join([*kept, f"+{len(attempts) - 1 - len(kept)}", last])


def attempts_trailer(attempts: Sequence[str]) -> Metadata:
    return ((ATTEMPTS_TRAILER, attempts_text(attempts)),) if attempts else ()


# gRPC's rich status: a serialized google.rpc.Status with the details (rpc/status.py).
STATUS_DETAILS_KEY = "grpc-status-details-bin"

# google.rpc.ErrorInfo of a modelwire refusal a peer's code acts on, never its message text.
ERROR_DOMAIN = "modelwire"
# Refused before any work (admission): a gateway may send the call to another instance.
NOT_STARTED = "NOT_STARTED"
# Another identity holds the instance id (a controller's PERMISSION_DENIED): the worker's agent
# registers again under a new one.
ID_TAKEN = "ID_TAKEN"

# The health service name under which a worker says whether its shared quota store answers
# (SERVING) or not (NOT_SERVING); set only when [quota] names a store.
QUOTA_STORE_HEALTH = "modelwire.quota.Store"

WORKER_SERVICE: str = worker_pb2.DESCRIPTOR.services_by_name["ModelWorker"].full_name


def model_health(name: str) -> str:
    """The health service name of one model or route a worker serves: NOT_SERVING while every
    deployment it may call has its circuit open."""
    return f"{WORKER_SERVICE}/{name}"


# A worker's admin service: what tenants have used against its [quota] rules.
USAGE_SERVICE: str = usage_pb2.DESCRIPTOR.services_by_name["UsageAdmin"].full_name
