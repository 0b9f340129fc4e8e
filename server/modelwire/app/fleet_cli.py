"""`modelwire controller`, `modelwire gateway`, `modelwire instances`, and the flags every server
command shares (each overrides its configuration file's key)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from pathlib import Path
from typing import TypeVar

from modelwire.app.config import load_controller_config, load_gateway_config, read_auth
from modelwire.app.reload import Reloader
from modelwire.core.settings import (
    ControllerFile,
    GatewayFile,
    HttpConfig,
    ObservabilityConfig,
    RegistryAccess,
    ServerConfig,
    override,
    parse,
)
from modelwire.fleet.types import Instance
from modelwire.observe.logs import configure_logging
from modelwire.observe.metrics import serve_metrics
from modelwire.rpc.server import serve_until_signalled

logger = logging.getLogger(__name__)

REGISTRY_HELP = "etcd://HOST:PORT[,HOST:PORT]/PREFIX: keep instances in etcd (several machines)"
S = TypeVar("S", bound=ServerConfig)


def add_server_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--config", type=Path, help="TOML configuration file (docs/configuration.md)"
    )
    command.add_argument("--host", help="overrides [server].host")
    command.add_argument("--port", type=int, help="overrides [server].port")
    command.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on this port (off by default)"
    )
    command.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        default=None,
        help="listen on a non-loopback address without [auth] (a trusted network only)",
    )


def add_http_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--http-port",
        type=int,
        help="serve the OpenAI and Anthropic HTTP APIs on this port (overrides [http].port)",
    )


def http_overrides(http: HttpConfig, args: argparse.Namespace) -> HttpConfig:
    if getattr(args, "http_port", None) is not None:
        return override(http, "--http-port", port=args.http_port)
    return http


def server_overrides(server: S, args: argparse.Namespace) -> S:
    for key in ("host", "port", "allow_unauthenticated"):
        if getattr(args, key, None) is not None:
            server = override(server, "--" + key.replace("_", "-"), **{key: getattr(args, key)})
    return server


def observability_overrides(
    observability: ObservabilityConfig, args: argparse.Namespace
) -> ObservabilityConfig:
    if getattr(args, "metrics_port", None) is not None:
        return override(observability, "--metrics-port", metrics_port=args.metrics_port)
    return observability


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_registry_flags(command: argparse.ArgumentParser, required: bool = False) -> None:
    where = command.add_mutually_exclusive_group(required=required)
    where.add_argument(
        "--controller",
        metavar="ADDR",
        help="the modelwire controller at HOST:PORT (overrides [registry].controller)",
    )
    where.add_argument(
        "--registry", metavar="URL", help=f"{REGISTRY_HELP} (overrides [registry].etcd)"
    )


def registry_overrides(access: RegistryAccess, args: argparse.Namespace) -> RegistryAccess:
    if args.controller:
        return override(access, "--controller", controller=args.controller, etcd=None)
    if args.registry:
        return override(access, "--registry", etcd=args.registry, controller=None)
    return access


def add_registration_flags(serve: argparse.ArgumentParser) -> None:
    """The flags `modelwire serve` takes to join a fleet."""
    group = serve.add_argument_group("fleet registration")
    add_registry_flags(group)  # type: ignore[arg-type]
    group.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="address callers dial (default: the listen address; a wildcard host becomes this "
        "host's name)",
    )
    group.add_argument("--weight", type=int, help="relative share of traffic (default 1)")
    group.add_argument(
        "--label",
        type=_label,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label for the registry; repeatable",
    )


def _serve_metrics(metrics: object, observability: ObservabilityConfig) -> None:
    if observability.metrics_port is not None:
        bound = serve_metrics(
            metrics,  # type: ignore[arg-type]
            observability.metrics_host,
            observability.metrics_port,
        )
        logger.info("metrics on http://%s:%d/metrics", observability.metrics_host, bound)


def _controller_config(args: argparse.Namespace) -> ControllerFile:
    """The configuration file with the command line's overrides: at start, and again on SIGHUP."""
    config = load_controller_config(args.config) if args.config else ControllerFile()
    section = config.controller
    if args.ttl is not None:
        section = override(section, "--ttl", ttl_s=args.ttl)
    if args.no_health_probe:
        section = override(section, "--no-health-probe", probe_health=False)
    access = (
        config.registry
        if not args.registry or args.registry == "memory"
        else override(config.registry, "--registry", etcd=args.registry)
    )
    return dataclasses.replace(
        config,
        controller=section,
        registry=access,
        server=server_overrides(config.server, args),
        observability=observability_overrides(config.observability, args),
    )


def _controller(args: argparse.Namespace) -> int:
    from modelwire.controller.memory import MemoryRegistry
    from modelwire.controller.server import ControllerServer, refuse_model_lists
    from modelwire.fleet.etcd import EtcdRegistry

    config = _controller_config(args)
    section, access, observability = config.controller, config.registry, config.observability
    configure_logging(args.log_level, args.log_format or observability.log_format)
    source = str(args.config or "the command line")

    async def run() -> None:
        registry = (
            EtcdRegistry.from_url(access.etcd, ttl_s=section.ttl_s, access=access)
            if access.etcd
            else MemoryRegistry(section.ttl_s)
        )
        server = ControllerServer(
            registry,
            config.server,
            section,
            auth=read_auth(config.auth, source),
            tls=config.tls,
            observability=observability,
        )
        _serve_metrics(server.rpc.metrics, observability)
        await server.start()
        print(f"modelwire controller on {server.address} ({registry})", flush=True)
        reload = Reloader(
            "controller",
            server.rpc,
            config,
            lambda: _controller_config(args),
            lambda new: refuse_model_lists(read_auth(new.auth, source)),
        )
        await serve_until_signalled(reload)
        logger.info("stopping")
        await server.stop()

    asyncio.run(run())
    return 0


def _gateway_config(args: argparse.Namespace) -> GatewayFile:
    """The configuration file with the command line's overrides: at start, and again on SIGHUP."""
    config = load_gateway_config(args.config) if args.config else GatewayFile()
    server = server_overrides(config.server, args)
    if args.grace_period is not None:
        server = override(server, "--grace-period", grace_period_s=args.grace_period)
    return dataclasses.replace(
        config,
        server=server,
        registry=registry_overrides(config.registry, args),
        observability=observability_overrides(config.observability, args),
        http=http_overrides(config.http, args),
    )


def _gateway(args: argparse.Namespace) -> int:
    from modelwire.app.gateway_http import gateway_facade
    from modelwire.fleet.connect import connect
    from modelwire.gateway.server import Gateway

    config = _gateway_config(args)
    if not config.registry.enabled:
        raise SystemExit(
            "modelwire gateway: name the registry: --controller ADDR, --registry etcd://… or "
            "[registry] in --config"
        )
    observability = config.observability
    configure_logging(args.log_level, args.log_format or observability.log_format)
    source = str(args.config or "the command line")

    async def run() -> None:
        auth = read_auth(config.auth, source)
        gateway = Gateway(
            connect(config.registry),
            config.server,
            config.gateway,
            auth=auth,
            tls=config.tls,
            observability=observability,
        )
        facade = gateway_facade(gateway, config, auth)
        _serve_metrics(gateway.rpc.metrics, observability)
        await gateway.start()
        if facade is not None:
            await facade.start()
        http = f" and {facade.address}" if facade is not None else ""
        print(
            f"modelwire gateway on {gateway.address}{http} (instances from {gateway.source})",
            flush=True,
        )
        reload = Reloader(
            "gateway",
            gateway.rpc,
            config,
            lambda: _gateway_config(args),
            lambda new: read_auth(new.auth, source),
        )
        await serve_until_signalled(reload)
        logger.info("draining: grace period %.1fs", config.server.grace_period_s)
        await gateway.stop(facade.stop if facade is not None else None)

    asyncio.run(run())
    return 0


def _instances(args: argparse.Namespace) -> int:
    """Prints the registry's instances, from a controller or straight from etcd."""
    from modelwire.fleet.connect import connect

    tls = {
        key: getattr(args, key)
        for key in ("ca_file", "cert_file", "key_file")
        if getattr(args, key)
    }
    access = registry_overrides(
        parse(
            RegistryAccess,
            {"token_env": args.token_env, "tls": tls or None},
            "the command line",
            "instances",
        ),
        args,
    )

    async def run() -> list[Instance]:
        registry = connect(access)
        try:
            watch = registry.watch(args.model)
            snapshot = await asyncio.wait_for(anext(watch), args.timeout)
            await watch.aclose()  # type: ignore[attr-defined]
            return [event.instance for event in snapshot.events]
        finally:
            await registry.close()

    # The registry clients log each reconnect; this one-shot command says what failed in one line.
    logging.getLogger("modelwire").setLevel(logging.ERROR)
    try:
        instances = asyncio.run(run())
    except (TimeoutError, ConnectionError, OSError) as error:
        reason = str(error) or f"no answer within --timeout {args.timeout:g}s"
        print(
            f"modelwire: cannot read the instances from {access.controller or access.etcd}: "
            f"{reason}",
            file=sys.stderr,
        )
        return 1
    for instance in instances:
        models = ",".join(
            f"{m.model}(load "
            f"{instance.load_of(m.model).in_flight}+"
            f"{instance.load_of(m.model).queued}q/{m.capacity})"
            for m in instance.spec.models
        )
        state = "healthy" if instance.healthy else "UNHEALTHY"
        print(
            f"{instance.instance_id}\t{instance.address}\t{state}"
            f"\tweight={instance.spec.weight}\t{models}"
        )
    return 0


def add_fleet_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    controller = commands.add_parser(
        "controller", help="run a model controller (the fleet's registry)"
    )
    add_server_flags(controller)
    controller.add_argument(
        "--ttl",
        type=float,
        help="seconds without a heartbeat before an instance is removed (overrides "
        "[controller].ttl_s)",
    )
    controller.add_argument(
        "--registry", metavar="URL", help=f"memory (default) or {REGISTRY_HELP}"
    )
    controller.add_argument(
        "--no-health-probe",
        action="store_true",
        help="judge health by heartbeats only (default: also follow each instance's health Watch)",
    )
    controller.add_argument(
        "--log-format", choices=("text", "json"), help="overrides [observability].log_format"
    )
    controller.set_defaults(run=_controller)

    gateway = commands.add_parser(
        "gateway", help="serve ModelWorker by forwarding to the fleet's least-loaded instance"
    )
    add_server_flags(gateway)
    add_http_flags(gateway)
    add_registry_flags(gateway)
    gateway.add_argument(
        "--grace-period",
        type=float,
        help="seconds in-flight calls get at shutdown (overrides [server].grace_period_s)",
    )
    gateway.add_argument(
        "--log-format", choices=("text", "json"), help="overrides [observability].log_format"
    )
    gateway.set_defaults(run=_gateway)

    instances = commands.add_parser(
        "instances", help="list the fleet's instances (from a controller or etcd)"
    )
    add_registry_flags(instances, required=True)
    instances.add_argument("--model", default="", help="only instances serving this model")
    instances.add_argument(
        "--token-env", help="environment variable holding a token with the read_fleet permission"
    )
    instances.add_argument(
        "--ca-file", help="TLS: the CA that signed the controller's (or etcd's) certificate"
    )
    instances.add_argument("--cert-file", help="mTLS: this client's certificate")
    instances.add_argument("--key-file", help="mTLS: this client's key")
    instances.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the registry"
    )
    instances.set_defaults(run=_instances)
