"""`modelwire controller`: the ModelController service over a registry, on the shared server
builder."""

from __future__ import annotations

from modelwire.controller.prober import HealthProber
from modelwire.controller.servicer import ModelControllerServicer, RegistrationPolicy
from modelwire.core.addresses import is_loopback
from modelwire.core.settings import (
    AuthConfig,
    ConfigError,
    ControllerSection,
    ObservabilityConfig,
    Permission,
    ServerConfig,
    TlsConfig,
)
from modelwire.fleet.registry import Registry
from modelwire.rpc.server import RpcServer, Service
from modelwire.v1 import controller_pb2, controller_pb2_grpc

CONTROLLER_SERVICE: str = controller_pb2.DESCRIPTOR.services_by_name["ModelController"].full_name
_REGISTERING = frozenset({"RegisterInstance", "Heartbeat", "DeregisterInstance"})


def permission_of(method: str) -> Permission | None:
    if not method.startswith(f"/{CONTROLLER_SERVICE}/"):
        return None
    return "register" if method.rsplit("/", 1)[1] in _REGISTERING else "read_fleet"


def refuse_model_lists(auth: AuthConfig | None) -> AuthConfig | None:
    """`auth`, unless a token has a `models` allow-list: a controller serves no models, so it
    could never take effect here, and a security setting that silently does nothing is refused (at
    start, and by a reload)."""
    if auth is None:
        return None
    for index, grant in enumerate(auth.grants):
        if grant.models is not None:
            raise ConfigError(
                f"{auth.tokens_file or 'auth'}: tokens[{index}].models: token {grant.name!r} has a "
                "model allow-list, which a controller cannot honour (it serves no models): remove "
                "`models` from this token, or give the controller a tokens file of its own"
            )
    return auth


class ControllerServer:
    """A running controller: ModelController, health and reflection on one port.

    The controller also follows each instance's grpc.health.v1 Watch (`probe_health`) and marks it
    unhealthy at once when it stops serving (draining, killed), not only when heartbeats stop.
    """

    def __init__(
        self,
        registry: Registry,
        server: ServerConfig | None = None,
        controller: ControllerSection | None = None,
        *,
        auth: AuthConfig | None = None,
        tls: TlsConfig | None = None,
        observability: ObservabilityConfig | None = None,
    ) -> None:
        server = server or ServerConfig(port=0)
        controller = controller or ControllerSection()
        refuse_model_lists(auth)
        self.registry = registry
        allow_private = controller.allow_private_addresses
        policy = RegistrationPolicy(
            allow_private_addresses=is_loopback(server.host)
            if allow_private is None
            else allow_private,
            max_weight=controller.max_weight,
        )
        servicer = ModelControllerServicer(registry, policy)
        self.rpc = RpcServer(
            role="controller",
            server=server,
            services=[
                Service(
                    CONTROLLER_SERVICE,
                    lambda s: controller_pb2_grpc.add_ModelControllerServicer_to_server(
                        servicer, s
                    ),
                )
            ],
            permission_of=permission_of,
            tls=tls,
            auth=auth,
            observability=observability,
        )
        self._prober = (
            HealthProber(registry, controller.workers) if controller.probe_health else None
        )

    @property
    def address(self) -> str:
        return self.rpc.address

    @property
    def port(self) -> int:
        return self.rpc.port

    async def start(self) -> None:
        await self.registry.start()
        await self.rpc.start()
        if self._prober is not None:
            await self._prober.start()

    async def stop(self) -> None:
        async def stop_probing() -> None:
            if self._prober is not None:
                await self._prober.close()

        await self.rpc.drain(stop_probing)
        await self.registry.close()
