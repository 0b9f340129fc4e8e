"""`modelwire controller`: the ModelController service over a registry, with health and reflection."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from modelwire.controller.prober import HealthProber
from modelwire.fleet.registry import Registry
from modelwire.rpc.channels import server_ping_options
from modelwire.controller.servicer import ModelControllerServicer
from modelwire.v1 import controller_pb2, controller_pb2_grpc

logger = logging.getLogger(__name__)

CONTROLLER_SERVICE: str = controller_pb2.DESCRIPTOR.services_by_name["ModelController"].full_name


class ControllerServer:
    """A running controller: ModelController, health and reflection on one port.

    With `probe_health`, the controller also follows each instance's grpc.health.v1 Watch stream and
    marks it unhealthy at once when it stops serving (draining, killed), not only when heartbeats stop.
    """

    def __init__(self, registry: Registry, host: str = "127.0.0.1", port: int = 0, probe_health: bool = True) -> None:
        self.registry = registry
        self.host = host
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(options=server_ping_options())
        controller_pb2_grpc.add_ModelControllerServicer_to_server(ModelControllerServicer(registry), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (CONTROLLER_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}")
        self._prober = HealthProber(registry) if probe_health else None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        await self.registry.start()
        await self.server.start()
        if self._prober is not None:
            await self._prober.start()
        for name in ("", CONTROLLER_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float | None = 1.0) -> None:
        await self.health.enter_graceful_shutdown()
        if self._prober is not None:
            await self._prober.close()
        await self.server.stop(grace_s)
        await self.registry.close()


async def wait_for_signal() -> None:
    """Returns on SIGTERM or SIGINT."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
