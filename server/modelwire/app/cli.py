"""`modelwire serve | generate | embed | models | count-tokens | usage`."""

from __future__ import annotations

import os
import signal

# SIGHUP's default action ends a process at once, and the imports below take a second or more
# before a server's loop handles it (a reload, app/reload.py): ignored from here until the command
# is known. A client command gets back what it inherited (nohup's SIG_IGN, or the default).
try:
    _INHERITED_SIGHUP = signal.signal(signal.SIGHUP, signal.SIG_IGN)
except ValueError:  # imported off the main thread: only the main thread handles signals
    _INHERITED_SIGHUP = None
_SERVER_COMMANDS = frozenset({"serve", "gateway", "controller"})

# gRPC core prints its own lines (`E1206 …`: handshake failures, bind errors) to stderr, which
# would break the log's one JSON object per line; it reads this once, when grpc is first imported
# (below). An operator's own GRPC_VERBOSITY (to debug gRPC) wins.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import argparse
import asyncio
import faulthandler
import json
import logging
import math
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from modelwire.app.config import EMBEDDED_MODEL, Config, embedded_default, load_config
from modelwire.app.fleet_cli import (
    add_fleet_commands,
    add_http_flags,
    add_registration_flags,
    add_server_flags,
    http_overrides,
    observability_overrides,
    registry_overrides,
    server_overrides,
)
from modelwire.app.processes import CHILD_FLAG
from modelwire.client import (
    REQUEST_ID_KEY,
    ModelwireCallError,
    ModelWorkerClient,
    ModelWorkerSyncClient,
    OutputCollector,
    grammar_format,
    image,
    json_object_format,
    json_schema_format,
    message,
    tls_credentials,
    tool,
)
from modelwire.client.errors import SERVER_NOT_TLS, TLS_REQUIRED
from modelwire.client.requests import Messages
from modelwire.core.errors import StartupFailure
from modelwire.core.settings import ConfigError, override
from modelwire.observe.logs import configure_logging
from modelwire.v1 import usage_pb2
from modelwire.v1 import worker_pb2 as pb

DEFAULT_ADDRESS = "127.0.0.1:50051"
TOKEN_ENV = "MODELWIRE_TOKEN"


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    """Address, deadline, TLS, token and request id of a client command, for either client."""
    tls = args.tls or any((args.ca_file, args.cert_file, args.key_file))
    return {
        "address": args.address,
        "timeout": args.timeout,
        "credentials": tls_credentials(args.ca_file, args.cert_file, args.key_file)
        if tls
        else None,
        "token": args.token,
        "metadata": ((REQUEST_ID_KEY, args.request_id),) if args.request_id else (),
    }


def _connection_hint(problem: str, args: argparse.Namespace) -> str:
    """What to change when the server refused the connection at its TLS handshake."""
    if problem == TLS_REQUIRED:
        return (
            "is the server using TLS? pass --ca-file CA.pem "
            "(or --tls for a certificate the system's roots trust)"
        )
    if problem == SERVER_NOT_TLS:
        return "is the server plaintext? leave out --tls, --ca-file, --cert-file and --key-file"
    if args.cert_file:
        return (
            "the server refused this client's certificate: "
            "under mTLS it must be signed by the server's client_ca_file"
        )
    return "the server may require a client certificate (mTLS): pass --cert-file and --key-file"


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
        registration = override(
            registration, "--label", labels={**registration.labels, **dict(args.label)}
        )
    return replace(
        config,
        server=server,
        observability=observability_overrides(config.observability, args),
        registry=registry_overrides(config.registry, args),
        registration=registration,
        http=http_overrides(config.http, args),
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
        serve(
            config,
            on_ready=announce,
            serve_metrics_here=not args.child,
            lifeline=args.child,
            reload_config=lambda: _config(args),
        )
    )
    return 0


def _text_or_file(value: str) -> str:
    """`@PATH` is the file's text; anything else is the text itself."""
    if not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text(encoding="utf-8")
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {value[1:]!r}: {error.strerror}") from None


def _json_object_text(value: str) -> str:
    """A JSON object (a schema), inline or `@FILE`; sent as written, so key order and numbers
    survive."""
    text = _text_or_file(value)
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("must be a JSON object (a JSON Schema)")
    return text


def _tool_flag(value: str) -> tuple[str, str]:
    name, _, schema = value.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"expected NAME=SCHEMA_JSON or NAME=@FILE, got {value!r}")
    return name, _json_object_text(schema) if schema else ""


def _description_flag(value: str) -> tuple[str, str]:
    name, sep, text = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=TEXT, got {value!r}")
    return name, text


def _image_flag(value: str) -> pb.Image:
    try:
        return image(value)
    except (OSError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _generate(args: argparse.Namespace) -> int:
    descriptions = dict(args.tool_description)
    unknown = sorted(set(descriptions) - {name for name, _ in args.tool})
    if unknown:
        print(
            f"modelwire: --tool-description names no --tool: {', '.join(unknown)}", file=sys.stderr
        )
        return 2
    tools = [
        tool(name, schema or None, description=descriptions.get(name, ""), strict=args.strict)
        for name, schema in args.tool
    ]
    output_format = (
        json_object_format()
        if args.json_object
        else json_schema_format(args.schema_name, args.json_schema, strict=args.strict)
        if args.json_schema is not None
        else grammar_format(args.grammar)
        if args.grammar is not None
        else None
    )
    messages: Messages = [message("user", args.prompt, *args.image)] if args.image else args.prompt
    collector = OutputCollector()

    async def run() -> None:
        async with ModelWorkerClient(**_client_options(args)) as client:
            async for chunk in client.stream(
                args.model,
                messages,
                temperature=args.temperature,
                max_new_tokens=args.max_new_tokens,
                tools=tools,
                tool_choice=args.tool_choice,
                parallel_tool_calls=args.parallel_tool_calls,
                output_format=output_format,
                reasoning_effort=args.reasoning_effort,
                reasoning_budget_tokens=args.reasoning_budget,
            ):
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
                collector.add(chunk)

    try:
        asyncio.run(run())
    except ModelwireCallError as error:
        if collector.output().text:
            print(flush=True)  # the error's line does not start in the middle of the text
        if error.code is not grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        print(
            f"modelwire: {error}\n  the call took longer than --timeout {args.timeout:g} s: "
            "raise --timeout, or bound the output with --max-new-tokens "
            "(a local model writes a few dozen tokens a second)",
            file=sys.stderr,
        )
        return 1
    output = collector.output()
    if output.text or not output.tool_calls:
        sys.stdout.write("\n")
    # One JSON line per tool call, after the text: {"id": ..., "name": ..., "arguments": {...}}.
    for call in output.tool_calls:
        try:
            arguments: dict[str, Any] = {"arguments": json.loads(call.arguments_json or "{}")}
        except json.JSONDecodeError:
            arguments = {"arguments_json": call.arguments_json}
        print(json.dumps({"id": call.id, "name": call.name, **arguments}), flush=True)
    if output.finish_reason == pb.FINISH_REASON_LENGTH:
        print(
            "modelwire: the output was cut at its token bound (finish_reason LENGTH); "
            "--max-new-tokens sets it",
            file=sys.stderr,
        )
    return 0


def _embed(args: argparse.Namespace) -> int:
    with ModelWorkerSyncClient(**_client_options(args)) as client:
        response = client.embed(args.model, args.texts, args.dimensions)
    for embedding in response.embeddings:
        values = embedding.values
        if args.summary:
            norm = math.sqrt(sum(value * value for value in values))
            head = [float(f"{value:.6g}") for value in values[:4]]
            print(json.dumps({"dimensions": len(values), "norm": round(norm, 6), "head": head}))
        else:
            # Nine significant digits give back every float32 exactly.
            print("[" + ",".join(f"{value:.9g}" for value in values) + "]")
    return 0


def _models(args: argparse.Namespace) -> int:
    with ModelWorkerSyncClient(**_client_options(args)) as client:
        for model in client.list_models():
            capabilities = ",".join(
                pb.Capability.Name(c).removeprefix("CAPABILITY_").lower()
                for c in model.capabilities
            )
            print(
                f"{model.model}\t{model.provider}\tcontext={model.context_length}"
                f"\tmax_output={model.max_output_tokens}"
                f"\tcapabilities={capabilities}"
            )
    return 0


def _count_tokens(args: argparse.Namespace) -> int:
    with ModelWorkerSyncClient(**_client_options(args)) as client:
        count = client.count_tokens(args.model, args.prompt)
    print(f"{count.count}\t{count.tokenizer}\t{'exact' if count.exact else 'estimate'}")
    return 0


# The budgets' limits: money, shown to the millionth.
_MONEY = frozenset({usage_pb2.LIMIT_KIND_BUDGET_PER_DAY, usage_pb2.LIMIT_KIND_BUDGET_PER_MONTH})


def _limit_name(kind: usage_pb2.LimitKind) -> str:
    """A limit as its [[quota.rules]] key: LIMIT_KIND_REQUESTS_PER_MINUTE → requests_per_minute."""
    return usage_pb2.LimitKind.Name(kind).removeprefix("LIMIT_KIND_").lower()


def _limit_text(limit: usage_pb2.LimitUsage) -> str:
    """`requests_per_minute=2/5 (resets in 58s)`; money with 6 decimals; no reset for concurrent
    calls (they free as calls end)."""
    if limit.kind in _MONEY:
        amounts = f"{limit.used:.6f}/{limit.limit:.6f}"
    else:
        amounts = f"{limit.used:.0f}/{limit.limit:.0f}"
    text = f"{_limit_name(limit.kind)}={amounts}"
    if limit.HasField("resets_in"):
        text += f" (resets in {math.ceil(limit.resets_in.ToNanoseconds() / 1e9)}s)"
    return text


def _usage_json(response: usage_pb2.GetUsageResponse) -> dict[str, Any]:
    return {
        "store": response.store,
        "store_available": response.store_available,
        "rules": [
            {
                "rule": rule.rule,
                "tenant": rule.tenant,
                "model": rule.model,
                "limits": [
                    {
                        "kind": _limit_name(limit.kind),
                        "used": limit.used,
                        "limit": limit.limit,
                        "resets_in_s": limit.resets_in.ToNanoseconds() / 1e9
                        if limit.HasField("resets_in")
                        else None,
                    }
                    for limit in rule.limits
                ],
            }
            for rule in response.rules
        ],
    }


def _usage(args: argparse.Namespace) -> int:
    """Prints what tenants have used against a worker's [quota] rules (UsageAdmin.GetUsage)."""
    token = None
    if args.token_env is not None:
        token = os.environ.get(args.token_env)
        if not token:
            print(
                f"modelwire: --token-env {args.token_env}: environment variable "
                f"{args.token_env} is not set or empty",
                file=sys.stderr,
            )
            return 2
    tls = args.tls or any((args.ca_file, args.cert_file, args.key_file))
    with ModelWorkerSyncClient(
        args.worker,
        timeout=args.timeout,
        credentials=tls_credentials(args.ca_file, args.cert_file, args.key_file) if tls else None,
        token=token,
    ) as client:
        response = client.usage(args.tenant)
    if args.json:
        print(json.dumps(_usage_json(response)))
        return 0
    state = "available" if response.store_available else "UNAVAILABLE"
    print(f"store: {response.store} ({state})")
    for rule in response.rules:
        limits = "\t".join(_limit_text(limit) for limit in rule.limits)
        print(f"rule {rule.rule}\ttenant={rule.tenant}\tmodel={rule.model}\t{limits}")
    if not response.rules:
        print("modelwire: no [quota] rule applies to these tenants", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelwire", description="gRPC model-serving worker for LLMs"
    )
    parser.add_argument("--log-level", default="INFO", help="the worker's log level")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run a worker (the embedded gemma-3-270m without --config)"
    )
    add_server_flags(serve)
    add_http_flags(serve)
    serve.add_argument(
        "--processes", type=int, help="overrides [server].processes (processes sharing the port)"
    )
    serve.add_argument(CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    add_registration_flags(serve)
    serve.set_defaults(run=_serve)
    add_fleet_commands(commands)

    def client_command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument(
            "--address",
            default=DEFAULT_ADDRESS,
            help=f"worker or gateway address (default {DEFAULT_ADDRESS})",
        )
        sub.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
        sub.add_argument(
            "--token",
            default=os.environ.get(TOKEN_ENV),
            help=f"bearer token (default: ${TOKEN_ENV})",
        )
        sub.add_argument(
            "--ca-file",
            help="TLS: the CA that signed the server's certificate (TLS is on when any TLS flag "
            "is given)",
        )
        sub.add_argument("--cert-file", help="mTLS: this client's certificate")
        sub.add_argument("--key-file", help="mTLS: this client's key")
        sub.add_argument(
            "--tls", action="store_true", help="TLS with the system's root certificates"
        )
        sub.add_argument(
            "--request-id", help="x-request-id of the call (echoed in the worker's log)"
        )
        return sub

    generate = client_command(
        "generate", "stream a completion to stdout; tool calls follow as JSON lines"
    )
    generate.add_argument("--model", default=EMBEDDED_MODEL)
    generate.add_argument("--temperature", type=float)
    generate.add_argument("--max-new-tokens", type=int)
    generate.add_argument(
        "--tool",
        type=_tool_flag,
        action="append",
        default=[],
        metavar="NAME=SCHEMA",
        help="a tool the model may call, its arguments' JSON Schema inline or as @FILE (NAME "
        "alone: no arguments); repeatable",
    )
    generate.add_argument(
        "--tool-description",
        type=_description_flag,
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help="the description of the --tool NAME; repeatable",
    )
    generate.add_argument(
        "--tool-choice",
        metavar="auto|none|required|NAME",
        help="whether the model calls a tool, or which one it must call",
    )
    generate.add_argument(
        "--parallel-tool-calls",
        action=argparse.BooleanOptionalAction,
        help="allow (or forbid) several tool calls in one turn (default: the provider's)",
    )
    output = generate.add_mutually_exclusive_group()
    output.add_argument("--json-object", action="store_true", help="the output is one JSON object")
    output.add_argument(
        "--json-schema",
        type=_json_object_text,
        metavar="JSON|@FILE",
        help="the output is JSON matching this JSON Schema",
    )
    output.add_argument(
        "--grammar",
        type=_text_or_file,
        metavar="GBNF|@FILE",
        help="the output follows this GBNF grammar",
    )
    generate.add_argument(
        "--schema-name",
        default="output",
        help="the name of --json-schema's schema (default output)",
    )
    generate.add_argument(
        "--strict",
        action="store_true",
        help="ask the provider to enforce --json-schema and --tool schemas exactly",
    )
    generate.add_argument(
        "--image",
        type=_image_flag,
        action="append",
        default=[],
        metavar="PATH|URL",
        help="an image after the prompt (a file's type from its extension: .png .jpg .jpeg .gif "
        ".webp); repeatable",
    )
    generate.add_argument("--reasoning-effort", choices=("minimal", "low", "medium", "high"))
    generate.add_argument(
        "--reasoning-budget", type=int, metavar="TOKENS", help="tokens the model may spend thinking"
    )
    generate.add_argument("prompt")
    generate.set_defaults(run=_generate)

    embed = client_command(
        "embed", "print one embedding per text, each a JSON array on its own line"
    )
    embed.add_argument("--model", default=EMBEDDED_MODEL)
    embed.add_argument(
        "--dimensions", type=int, help="shorter embeddings, for models that can give them"
    )
    embed.add_argument(
        "--summary",
        action="store_true",
        help="print each embedding's dimensions, norm and first values instead",
    )
    embed.add_argument("texts", nargs="+", metavar="TEXT")
    embed.set_defaults(run=_embed)

    models = client_command("models", "list the worker's models")
    models.set_defaults(run=_models)

    count = client_command("count-tokens", "count a prompt's tokens with the model's tokenizer")
    count.add_argument("--model", default=EMBEDDED_MODEL)
    count.add_argument("prompt")
    count.set_defaults(run=_count_tokens)

    usage = commands.add_parser(
        "usage", help="print what tenants have used against a worker's [quota] rules"
    )
    usage.add_argument("--worker", required=True, metavar="HOST:PORT", help="the worker's address")
    usage.add_argument("--tenant", help="this tenant only (default: every tenant the worker knows)")
    usage.add_argument(
        "--token-env",
        metavar="VAR",
        help="environment variable holding a token with the read_usage permission",
    )
    usage.add_argument(
        "--ca-file",
        help="TLS: the CA that signed the worker's certificate (TLS is on when any TLS flag is "
        "given)",
    )
    usage.add_argument("--cert-file", help="mTLS: this client's certificate")
    usage.add_argument("--key-file", help="mTLS: this client's key")
    usage.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    usage.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    usage.add_argument(
        "--json", action="store_true", help="print the answer as one JSON object instead"
    )
    usage.set_defaults(run=_usage)
    return parser


def _settle_sighup(command: str) -> None:
    """A server keeps SIGHUP ignored until its loop reloads on it (app/reload.py); a client command
    gets back the disposition it inherited. Only the main thread may set one: main() called from
    another thread (an application's, a test's) leaves it alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    if command in _SERVER_COMMANDS:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    elif _INHERITED_SIGHUP is not None:
        signal.signal(signal.SIGHUP, _INHERITED_SIGHUP)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _settle_sighup(args.command)
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
        violations = error.violations
        # A refusal's message is its violations joined: print them one a line instead.
        headline = error.code.name if violations else f"{error.code.name}: {error.message}"
        print(f"modelwire: {headline}", file=sys.stderr)
        for field, description in violations:
            print(f"  {field}: {description}", file=sys.stderr)
        if error.connection_problem is not None:
            print(f"modelwire: {_connection_hint(error.connection_problem, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
