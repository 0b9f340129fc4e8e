"""The one server builder: the worker, the controller and the gateway are each an `RpcServer` with
their own services on it.

Every server gets: grpc.health.v1 (for "" and each service) and reflection; TLS or mTLS when
configured; the call pipeline (rpc/call_pipeline.py: the call log line and metrics, bearer auth
with per-method permissions, the server's own trailers, refusal of undecodable requests; after
OpenTelemetry's interceptor when tracing is enabled); receive limit,
keepalive and connection age; acceptance of clients' keepalive pings; a drain that says NOT_SERVING,
waits `drain_delay_s` for balancers that poll, then lets calls in flight finish within the grace
period. It refuses to listen on a non-loopback address without authentication unless told the
network is trusted (`allow_unauthenticated`), and says why a port cannot be listened on (taken, or
not an address of this host). Its tokens and TLS certificate can be replaced while it serves
(SIGHUP: app/reload.py).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from modelwire.core.addresses import ip_literal, is_loopback
from modelwire.core.errors import StartupFailure
from modelwire.core.settings import (
    AuthConfig,
    ObservabilityConfig,
    Permission,
    ServerConfig,
    TlsConfig,
)
from modelwire.observe import tracing
from modelwire.observe.call_observer import CallObserver, ModelLabel
from modelwire.observe.logs import AccessSampling
from modelwire.observe.metrics import WorkerMetrics
from modelwire.rpc.auth import BearerAuth
from modelwire.rpc.call_pipeline import CallPipeline, CallTrailers
from modelwire.rpc.channels import server_ping_options

logger = logging.getLogger(__name__)

HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass(frozen=True)
class Service:
    """A gRPC service to serve: its full name (for health and reflection) and how to add it."""

    name: str
    add: Callable[[grpc.aio.Server], None]


def check_exposure(role: str, server: ServerConfig, auth: AuthConfig | None) -> None:
    """Secure by default: a port others can reach needs credentials, or an explicit waiver."""
    if auth is None and not server.allow_unauthenticated and not is_loopback(server.host):
        raise StartupFailure(
            f"the {role} would listen on {server.host}:{server.port} without authentication; "
            "configure [auth] (tokens), or set [server] allow_unauthenticated = true "
            "(--allow-unauthenticated) for a trusted network"
        )


def _certificates(tls: TlsConfig) -> grpc.ServerCertificateConfiguration:
    """The certificate, key and client CA of `tls`, checked as a working set: a ValueError names
    what is wrong (gRPC itself would only fail each handshake)."""
    try:
        key, cert = tls.key_file.read_bytes(), tls.cert_file.read_bytes()
        client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if client_ca is not None:
            context.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
    except ssl.SSLError as error:
        paths = (tls.cert_file, tls.key_file, tls.client_ca_file)
        files = ", ".join(str(path) for path in paths if path)
        raise ValueError(
            f"tls: {files}: not a certificate, its key and a CA in PEM ({error.reason or error})"
        ) from None
    except OSError as error:
        raise ValueError(f"tls: cannot read {error.filename}: {error.strerror}") from None
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)


class ServerTls:
    """TLS credentials whose certificate, key and client CA can be replaced while serving (SIGHUP):
    gRPC asks `_fetch` at each new connection's handshake, so a reload applies from the next
    connection on. Whether client certificates are required at all is fixed at start."""

    def __init__(self, tls: TlsConfig) -> None:
        self.config = tls
        self._current = self._delivered = _certificates(tls)
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._current, self._fetch, require_client_authentication=tls.client_ca_file is not None
        )
        # Other listeners of the process on the same [tls] (the HTTP facade), told of a reload.
        self.followers: list[Callable[[TlsConfig], None]] = []

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """On a gRPC core thread, per handshake: a new configuration once, then None (unchanged)."""
        current = self._current
        if current is self._delivered:
            return None
        self._delivered = current
        return current

    def reload(self, tls: TlsConfig) -> None:
        """Reads `tls`'s files; a ValueError when they do not work (the running ones stay)."""
        self._current = _certificates(tls)
        self.config = tls
        for follow in self.followers:
            follow(tls)


def _options(server: ServerConfig, extra: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_receive_message_length", server.max_receive_message_bytes),
        ("grpc.keepalive_time_ms", int(server.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(server.keepalive_timeout_s * 1000)),
        *server_ping_options(),
        *extra,
    ]
    if server.max_connection_age_s is not None:
        options += [
            ("grpc.max_connection_age_ms", int(server.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(server.max_connection_age_grace_s * 1000)),
        ]
    return options


class RpcServer:
    def __init__(
        self,
        *,
        role: str,
        server: ServerConfig,
        services: Sequence[Service],
        permission_of: Callable[[str], Permission | None],
        tls: TlsConfig | None = None,
        auth: AuthConfig | None = None,
        observability: ObservabilityConfig | None = None,
        model_label: ModelLabel = lambda request: "",
        trailers: CallTrailers | None = None,
        options: Sequence[tuple[str, int]] = (),
    ) -> None:
        check_exposure(role, server, auth)
        observability = observability or ObservabilityConfig()
        self.role = role
        self.config = server
        self.metrics = WorkerMetrics()
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if observability.tracing:
            interceptors.append(tracing.server_interceptor(observability.otlp_endpoint))
        # Kept to be reloaded (SIGHUP, app/reload.py): the tokens, the certificates.
        self.auth = BearerAuth(auth, permission_of) if auth is not None else None
        try:
            self.tls = ServerTls(tls) if tls is not None else None
        except ValueError as error:
            raise StartupFailure(str(error)) from None
        # Which calls' access lines are written; the HTTP facade on this process shares it.
        self.sampling = AccessSampling(
            observability.access_log_sample_rate, observability.access_log_slow_s
        )
        observer = CallObserver(self.metrics, model_label, self.sampling)
        interceptors.append(CallPipeline(observer, self.auth, trailers))
        self.server = grpc.aio.server(interceptors=interceptors, options=_options(server, options))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        for service in services:
            service.add(self.server)
        self.service_names = tuple(service.name for service in services)
        reflection.enable_server_reflection(
            (*self.service_names, HEALTH_SERVICE, reflection.SERVICE_NAME), self.server
        )
        self.port = self._bind(server, shared_port=dict(options).get("grpc.so_reuseport") == 1)

    def _bind(self, server: ServerConfig, shared_port: bool) -> int:
        bind = f"{server.host}:{server.port}"
        # gRPC listens on those of a name's addresses it can (localhost: 127.0.0.1 and ::1) and
        # succeeds with one: a port taken on another would be someone else's there. Checked first,
        # unless processes share the port (SO_REUSEPORT: the others hold it).
        if server.port and not shared_port and not ip_literal(server.host):
            taken = _bind_failure(server.host, server.port, in_use_only=True)
            if taken is not None:
                raise StartupFailure(f"the {self.role} cannot listen on {bind}: {taken}")
        try:
            port: int = (
                self.server.add_secure_port(bind, self.tls.credentials)
                if self.tls
                else self.server.add_insecure_port(bind)
            )
        except RuntimeError:
            port = 0
        if port == 0:
            reason = _bind_failure(server.host, server.port) or "gRPC refused the address"
            raise StartupFailure(f"the {self.role} cannot listen on {bind}: {reason}")
        return port

    @property
    def address(self) -> str:
        host = self.config.host
        return (
            f"[{host}]:{self.port}"
            if ":" in host and not host.startswith("[")
            else f"{host}:{self.port}"
        )

    async def start(self) -> None:
        await self.server.start()
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def drain(self, leave: Callable[[], Awaitable[None]] | None = None) -> None:
        """NOT_SERVING, then `leave` (deregistration), then `drain_delay_s` in which new calls are
        still served (balancers that poll health see the change), then the grace period."""
        await self.health.enter_graceful_shutdown()
        if leave is not None:
            await leave()
        if self.config.drain_delay_s:
            logger.info(
                "%s: NOT_SERVING; still accepting calls for %.1fs",
                self.role,
                self.config.drain_delay_s,
            )
            await asyncio.sleep(self.config.drain_delay_s)
        await self.server.stop(self.config.grace_period_s)


def _bind_failure(host: str, port: int, in_use_only: bool = False) -> str | None:
    """Why `host:port` cannot be listened on, or None when binding each of its addresses works
    (with `in_use_only`, None unless the port is taken on one). gRPC only says "Failed to bind"
    (its reason goes to its own log): binding a socket the same way tells a taken port from the
    rest."""
    try:
        addresses = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        return (
            None if in_use_only else f"{host!r} is not an address of this host ({error.strerror})"
        )
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return (
                        f"port {port} is already in use on {host}; "
                        "choose another with --port (or [server] port)"
                    )
                if not in_use_only:
                    return error.strerror or str(error)
    return None


def on_signals(stop: asyncio.Event, reload: Callable[[], None] | None) -> None:
    """SIGTERM and SIGINT set `stop` (a drain follows); SIGHUP calls `reload`. SIGHUP's default
    action would kill the process at once, without a drain or a word."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(
        signal.SIGHUP, reload or (lambda: logger.warning("SIGHUP: nothing to reload"))
    )


def serve_until_signalled(reload: Callable[[], None] | None = None) -> Awaitable[Any]:
    """Completes on SIGTERM or SIGINT; SIGHUP calls `reload`."""
    stopping = asyncio.Event()
    on_signals(stopping, reload)
    return stopping.wait()
