"""Client channel options every process uses: keepalive, so a peer that vanished without a reset
(a frozen or unplugged host) is noticed in seconds, and quick reconnects after a restart.

Servers (rpc/server.py) accept these pings: gRPC servers otherwise answer pings more frequent than
every five minutes with GOAWAY "too_many_pings".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from modelwire.core.settings import ClientTlsConfig

KEEPALIVE_TIME_S = 10.0
KEEPALIVE_TIMEOUT_S = 5.0
# Pings the servers here accept: anything up to one every this many seconds.
MIN_PING_INTERVAL_S = 5.0


def client_options(
    keepalive_time_s: float = KEEPALIVE_TIME_S, keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S
) -> list[tuple[str, int | str]]:
    return [
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout_s * 1000)),
        # Idle channels (a gateway's channel to a worker between calls, a watch) are checked too.
        ("grpc.keepalive_permit_without_calls", 1),
        # Without these, gRPC's ping throttles (two pings without data, five minutes between
        # them) silence keepalive just when the peer stops answering.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_sent_ping_interval_without_data_ms", int(keepalive_time_s * 1000)),
        ("grpc.http2.min_time_between_pings_ms", int(keepalive_time_s * 1000)),
        # The wait for a ping's answer; gRPC's default is a minute, whatever keepalive_timeout says.
        ("grpc.http2.ping_timeout_ms", int(keepalive_timeout_s * 1000)),
        # gRPC's default reconnect backoff grows to two minutes; a restarted peer is back in
        # seconds.
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


def _with_token(
    details: grpc.aio.ClientCallDetails, header: tuple[str, str]
) -> grpc.aio.ClientCallDetails:
    metadata = [item for item in (details.metadata or ()) if item[0] != "authorization"]
    return details._replace(metadata=grpc.aio.Metadata(*metadata, header))


class _BearerUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer <token>` to every unary call (plaintext too, unlike gRPC's call
    credentials, which need TLS). grpc.aio files an interceptor under one call type only, hence a
    class per type."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_token(details, self._header), request)


class _BearerStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """The same for server-streaming calls (watches)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    async def intercept_unary_stream(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_token(details, self._header), request)


def channel_credentials(tls: ClientTlsConfig) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_file.read_bytes() if tls.ca_file else None,
        private_key=tls.key_file.read_bytes() if tls.key_file else None,
        certificate_chain=tls.cert_file.read_bytes() if tls.cert_file else None,
    )


def dial(
    address: str,
    tls: ClientTlsConfig | None = None,
    token: str | None = None,
    options: Sequence[tuple[str, int | str]] | None = None,
) -> grpc.aio.Channel:
    """A channel to another modelwire process (or etcd): TLS when `tls` is given, a bearer token
    on every call when `token` is, keepalive always."""
    channel_options: list[tuple[str, int | str]] = list(
        options if options is not None else client_options()
    )
    interceptors = [_BearerUnary(token), _BearerStream(token)] if token else None
    if tls is None:
        return grpc.aio.insecure_channel(
            address, options=channel_options, interceptors=interceptors
        )
    if tls.server_name:
        channel_options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(
        address, channel_credentials(tls), options=channel_options, interceptors=interceptors
    )
