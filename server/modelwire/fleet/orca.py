"""Reading the load-report trailers a worker writes (worker/orca.py), as a gateway does.

`endpoint-load-metrics-bin` is ORCA's own trailer, for gRPC clients that balance on it (Go, Java,
C++); their C core consumes it, so the same report also travels as `modelwire-load-bin`
(rpc/wire.py names both).
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError
from xds.data.orca.v3 import orca_load_report_pb2

from modelwire.rpc.wire import LOAD_TRAILER, ORCA_TRAILER

_REPORT_KEYS = frozenset({ORCA_TRAILER, LOAD_TRAILER})


def reported_load(trailers: Sequence[tuple[str, str | bytes]] | None) -> float | None:
    """The load the report in a call's trailing metadata (either copy) gives its model: calls in
    flight and queued. None without a report, or with one that does not say."""
    for key, value in trailers or ():
        if key in _REPORT_KEYS and isinstance(value, bytes):
            try:
                metrics = orca_load_report_pb2.OrcaLoadReport.FromString(value).named_metrics
            except DecodeError:
                return None  # a peer's garbage is no report, and no reason to fail its call
            in_flight = metrics.get("in_flight")
            return None if in_flight is None else in_flight + metrics.get("queued", 0.0)
    return None
