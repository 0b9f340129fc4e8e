"""Client channel options every process uses: keepalive, so a peer that vanished without a reset
(a frozen or unplugged host) is noticed in seconds, and quick reconnects after a restart.

Servers (rpc/server.py) accept these pings: gRPC servers otherwise answer pings more frequent than
every five minutes with GOAWAY "too_many_pings".
"""

from __future__ import annotations

KEEPALIVE_TIME_S = 10.0
KEEPALIVE_TIMEOUT_S = 5.0
# Pings the servers here accept: anything up to one every this many seconds.
MIN_PING_INTERVAL_S = 5.0


def client_options(keepalive_time_s: float = KEEPALIVE_TIME_S, keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S) -> list[tuple[str, int]]:
    return [
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout_s * 1000)),
        # Idle channels (a gateway's channel to a worker between calls, a watch) are checked too.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # gRPC's default reconnect backoff grows to two minutes; a restarted peer is back in seconds.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


def server_ping_options() -> list[tuple[str, int]]:
    """What a server needs to accept the clients' keepalive pings."""
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(MIN_PING_INTERVAL_S * 1000)),
        ("grpc.http2.min_time_between_pings_ms", int(MIN_PING_INTERVAL_S * 1000)),
        ("grpc.http2.max_ping_strikes", 0),
    ]
