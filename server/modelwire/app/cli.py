"""`modelwire serve | generate | models | count-tokens`."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import sys
from dataclasses import replace
from typing import Any

from modelwire.app.config import EMBEDDED_MODEL, Config, embedded_default, load_config
from modelwire.client import REQUEST_ID_KEY, ModelwireCallError, ModelWorkerClient, ModelWorkerSyncClient, tls_credentials
from modelwire.app.processes import CHILD_FLAG
from modelwire.app.fleet_cli import (
    add_fleet_commands,
    add_registration_flags,
    add_server_flags,
    observability_overrides,
    registry_overrides,
    server_overrides,
)
from modelwire.core.settings import ConfigError, override
from modelwire.core.errors import StartupFailure
from modelwire.observe.logs import configure_logging

DEFAULT_ADDRESS = "127.0.0.1:50051"
TOKEN_ENV = "MODELWIRE_TOKEN"


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    """Address, deadline, TLS, token and request id of a client command, for either client."""
    tls = args.tls or any((args.ca_file, args.cert_file, args.key_file))
    return {
        "address": args.address,
        "timeout": args.timeout,
        "credentials": tls_credentials(args.ca_file, args.cert_file, args.key_file) if tls else None,
        "token": args.token,
        "metadata": ((REQUEST_ID_KEY, args.request_id),) if args.request_id else (),
    }


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config) if args.config else embedded_default()
    server = server_overrides(config.server, args)
    if args.processes is not None:
        server = override(server, "--processes", processes=args.processes)
    registration = config.registration
    if args.advertise is not None:
        registration = override(registration, "--advertise", advertise=args.advertise)
    if args.weight is not None:
        registration = override(registration, "--weight", weight=args.weight)
    if args.label:
        registration = override(registration, "--label", labels={**registration.labels, **dict(args.label)})
    return replace(
        config,
        server=server,
        observability=observability_overrides(config.observability, args),
        registry=registry_overrides(config.registry, args),
        registration=registration,
    )


def _serve(args: argparse.Namespace) -> int:
    # A crash in native code (llama.cpp) then prints where Python was, next to the last log line.
    faulthandler.enable()
    config = _config(args)
    configure_logging(args.log_level, config.observability.log_format)
    if config.server.processes > 1 and not args.child:
        from modelwire.app.processes import supervise

        return supervise(config, sys.argv[1:])

    from modelwire.app.server import Worker, serve

    def announce(worker: Worker) -> None:
        models = ", ".join(m.metadata.model for m in worker.models)
        try:
            print(f"modelwire serving {models} on {worker.address}", flush=True)
        except BrokenPipeError:
            # Whoever waited for this line is gone (a supervisor killed during our start); its
            # lifeline closing drains us. Later writes to stdout must not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    asyncio.run(
        serve(config, on_ready=announce, serve_metrics_here=not args.child, lifeline=args.child)
    )
    return 0


def _generate(args: argparse.Namespace) -> int:
    async def run() -> None:
        async with ModelWorkerClient(**_client_options(args)) as client:
            async for chunk in client.stream(
                args.model, args.prompt, temperature=args.temperature, max_new_tokens=args.max_new_tokens
            ):
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
        sys.stdout.write("\n")

    asyncio.run(run())
    return 0


def _models(args: argparse.Namespace) -> int:
    with ModelWorkerSyncClient(**_client_options(args)) as client:
        for model in client.list_models():
            print(f"{model.model}\t{model.provider}\tcontext={model.context_length}\tmax_output={model.max_output_tokens}")
    return 0


def _count_tokens(args: argparse.Namespace) -> int:
    with ModelWorkerSyncClient(**_client_options(args)) as client:
        count = client.count_tokens(args.model, args.prompt)
    print(f"{count.count}\t{count.tokenizer}\t{'exact' if count.exact else 'estimate'}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelwire", description="gRPC model-serving worker for LLMs")
    parser.add_argument("--log-level", default="INFO", help="the worker's log level")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run a worker (the embedded gemma-3-270m without --config)")
    add_server_flags(serve)
    serve.add_argument("--processes", type=int, help="overrides [server].processes (processes sharing the port)")
    serve.add_argument(CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    add_registration_flags(serve)
    serve.set_defaults(run=_serve)
    add_fleet_commands(commands)

    def client_command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--address", default=DEFAULT_ADDRESS, help=f"worker or gateway address (default {DEFAULT_ADDRESS})")
        sub.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
        sub.add_argument("--token", default=os.environ.get(TOKEN_ENV), help=f"bearer token (default: ${TOKEN_ENV})")
        sub.add_argument("--ca-file", help="TLS: the CA that signed the server's certificate (TLS is on when any TLS flag is given)")
        sub.add_argument("--cert-file", help="mTLS: this client's certificate")
        sub.add_argument("--key-file", help="mTLS: this client's key")
        sub.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
        sub.add_argument("--request-id", help="x-request-id of the call (echoed in the worker's log)")
        return sub

    generate = client_command("generate", "stream a completion to stdout")
    generate.add_argument("--model", default=EMBEDDED_MODEL)
    generate.add_argument("--temperature", type=float)
    generate.add_argument("--max-new-tokens", type=int)
    generate.add_argument("prompt")
    generate.set_defaults(run=_generate)

    models = client_command("models", "list the worker's models")
    models.set_defaults(run=_models)

    count = client_command("count-tokens", "count a prompt's tokens with the model's tokenizer")
    count.add_argument("--model", default=EMBEDDED_MODEL)
    count.add_argument("prompt")
    count.set_defaults(run=_count_tokens)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.run(args)
        return code
    except ConfigError as error:
        print(f"modelwire: invalid configuration: {error}", file=sys.stderr)
        return 2
    except StartupFailure as error:
        print(f"modelwire: cannot start: {error}", file=sys.stderr)
        return 1
    except ModelwireCallError as error:
        print(f"modelwire: {error}", file=sys.stderr)
        for field, description in error.field_violations.items():
            print(f"  {field}: {description}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
