"""`modelwire controller`, `modelwire gateway`, and the registration flags of `modelwire serve`."""

from __future__ import annotations

import argparse
import asyncio
import logging

from modelwire.worker.agent import RegistrationSettings
from modelwire.fleet.types import Instance
from modelwire.controller.memory import MemoryRegistry
from modelwire.fleet.connect import connect
from modelwire.fleet.registry import DEFAULT_TTL_S, Registry
from modelwire.observe.logs import configure_logging

logger = logging.getLogger(__name__)

DEFAULT_CONTROLLER_PORT = 50050
DEFAULT_GATEWAY_PORT = 50052
REGISTRY_HELP = "etcd://HOST:PORT[,HOST:PORT]/PREFIX: keep instances in etcd (several machines)"


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_registration_flags(serve: argparse.ArgumentParser) -> None:
    """The flags `modelwire serve` takes to join a fleet."""
    group = serve.add_argument_group("fleet registration")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--controller", metavar="ADDR", help="register with the modelwire controller at HOST:PORT")
    where.add_argument("--registry", metavar="URL", help=REGISTRY_HELP)
    group.add_argument("--advertise", metavar="HOST:PORT",
                       help="address callers dial (default: the listen address; a wildcard host becomes this host's name)")
    group.add_argument("--weight", type=int, default=1, help="relative share of traffic (default 1)")
    group.add_argument("--label", type=_label, action="append", default=[], metavar="KEY=VALUE",
                       help="a label for the registry; repeatable")


def registration_from_args(args: argparse.Namespace) -> RegistrationSettings | None:
    settings = RegistrationSettings(
        controller=args.controller,
        registry=args.registry,
        advertise=args.advertise,
        weight=args.weight,
        labels=dict(args.label),
    )
    return settings if settings.enabled else None


def registry_from_url(url: str | None, ttl_s: float) -> Registry:
    if not url or url == "memory":
        return MemoryRegistry(ttl_s)
    from modelwire.fleet.etcd import EtcdRegistry

    return EtcdRegistry.from_url(url, ttl_s=ttl_s)


def _controller(args: argparse.Namespace) -> int:
    from modelwire.controller.server import ControllerServer, wait_for_signal

    configure_logging(args.log_level, args.log_format)

    async def run() -> None:
        registry = registry_from_url(args.registry, args.ttl)
        server = ControllerServer(registry, args.host, args.port, probe_health=not args.no_health_probe)
        await server.start()
        print(f"modelwire controller on {server.address} ({registry})", flush=True)
        await wait_for_signal()
        logger.info("stopping")
        await server.stop()

    asyncio.run(run())
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from modelwire.gateway.server import Gateway
    from modelwire.controller.server import wait_for_signal

    configure_logging(args.log_level, args.log_format)

    async def run() -> None:
        gateway = Gateway(connect(args.controller, args.registry), args.host, args.port)
        await gateway.start()
        print(f"modelwire gateway on {gateway.address} (instances from {gateway.source})", flush=True)
        await wait_for_signal()
        logger.info("draining: grace period %.1fs", args.grace_period)
        await gateway.stop(args.grace_period)

    asyncio.run(run())
    return 0


def _instances(args: argparse.Namespace) -> int:
    """Prints the registry's instances, from a controller or straight from etcd."""

    async def run() -> list[Instance]:
        registry = connect(args.controller, args.registry)
        try:
            watch = registry.watch(args.model)
            snapshot = await anext(watch)
            await watch.aclose()  # type: ignore[attr-defined]
            return [event.instance for event in snapshot.events]
        finally:
            await registry.close()

    for instance in asyncio.run(run()):
        models = ",".join(f"{m.model}(load {instance.load_of(m.model).in_flight}+{instance.load_of(m.model).queued}q"
                          f"/{m.capacity})" for m in instance.spec.models)
        state = "healthy" if instance.healthy else "UNHEALTHY"
        print(f"{instance.instance_id}\t{instance.address}\t{state}\tweight={instance.spec.weight}\t{models}")
    return 0


def add_fleet_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    controller = commands.add_parser("controller", help="run a model controller (the fleet's registry)")
    controller.add_argument("--host", default="127.0.0.1")
    controller.add_argument("--port", type=int, default=DEFAULT_CONTROLLER_PORT)
    controller.add_argument("--ttl", type=float, default=DEFAULT_TTL_S,
                            help=f"seconds without a heartbeat before an instance is removed (default {DEFAULT_TTL_S:g})")
    controller.add_argument("--registry", metavar="URL", help=f"memory (default) or {REGISTRY_HELP}")
    controller.add_argument("--no-health-probe", action="store_true",
                            help="judge health by heartbeats only (default: also follow each instance's health Watch)")
    controller.add_argument("--log-format", choices=("text", "json"), default="text")
    controller.set_defaults(run=_controller)

    gateway = commands.add_parser("gateway", help="serve ModelWorker by forwarding to the fleet's least-loaded instance")
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument("--port", type=int, default=DEFAULT_GATEWAY_PORT)
    where = gateway.add_mutually_exclusive_group(required=True)
    where.add_argument("--controller", metavar="ADDR", help="the modelwire controller at HOST:PORT")
    where.add_argument("--registry", metavar="URL", help=REGISTRY_HELP)
    gateway.add_argument("--grace-period", type=float, default=10.0, help="seconds in-flight calls get at shutdown")
    gateway.add_argument("--log-format", choices=("text", "json"), default="text")
    gateway.set_defaults(run=_gateway)

    instances = commands.add_parser("instances", help="list the fleet's instances (from a controller or etcd)")
    where = instances.add_mutually_exclusive_group(required=True)
    where.add_argument("--controller", metavar="ADDR", help="the modelwire controller at HOST:PORT")
    where.add_argument("--registry", metavar="URL", help=REGISTRY_HELP)
    instances.add_argument("--model", default="", help="only instances serving this model")
    instances.set_defaults(run=_instances)
