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


def parse_report(
    trailers: Sequence[tuple[str, str | bytes]] | None,
) -> orca_load_report_pb2.OrcaLoadReport | None:
    """The load report in a call's trailing metadata (either copy), if there is one."""
    for key, value in trailers or ():
        if key in (ORCA_TRAILER, LOAD_TRAILER) and isinstance(value, bytes):
            try:
                return orca_load_report_pb2.OrcaLoadReport.FromString(value)
            except DecodeError:
                return None  # a peer's garbage is no report, and no reason to fail its call
    return None
